"""The server secret (the HMAC key of API keys): FWB_SECRET_KEY, else `<data_dir>/secret.key`."""

from __future__ import annotations

import enum
import errno
import os
import secrets
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from filewallball.adapters.disk import fsync_dir

_NO_HARD_LINKS = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS})


class SecretSource(enum.StrEnum):
    ENV = "env"  # FWB_SECRET_KEY
    FILE = "file"  # <data_dir>/secret.key, generated at the first start
    NONE = "none"  # neither yet


@dataclass(frozen=True, slots=True)
class FoundSecret:
    """Where an instance's server secret comes from, and the secret itself when there is one."""

    source: SecretSource
    key: bytes | None = None  # the HMAC key
    stored: bytes | None = None  # the file's bytes as they are (source FILE only)


def load_or_create_secret(path: Path, *, env_value: str | None) -> bytes:
    """`env_value` when set, else the key in `path`, generated there (0600) if there is none.

    Every replica must use the same one (set FWB_SECRET_KEY from a Kubernetes Secret).
    """
    if env_value:
        return env_value.encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        _create(path, secrets.token_hex(32).encode())
    return path.read_bytes().strip()


def find_secret(path: Path, *, env_value: str | None) -> FoundSecret:
    """Where the secret load_or_create_secret would use comes from; never creates one."""
    if env_value:
        return FoundSecret(SecretSource.ENV, key=env_value.encode())
    stored = read_secret_file(path)
    if stored is None:
        return FoundSecret(SecretSource.NONE)
    return FoundSecret(SecretSource.FILE, key=stored.strip(), stored=stored)


def read_secret_file(path: Path) -> bytes | None:
    """The file's bytes as they are; None when there is no such file."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def install_secret(path: Path, data: bytes) -> None:
    """Put `data` at `path` (0600, fsynced), replacing what is there in one atomic rename.

    A reader sees the old secret or the new one, never a mix; on an error the old one stays.
    """
    temp = _write_temp(path, data)
    try:
        os.replace(temp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    fsync_dir(path.parent)


def remove_secret(path: Path) -> None:
    """Remove the file (durably); nothing when there is none."""
    with suppress(FileNotFoundError):
        os.unlink(path)
        fsync_dir(path.parent)


def _create(path: Path, data: bytes) -> None:
    """Publish `data` at `path` unless a file is there already (then that one is the secret).

    Written aside and hard-linked into place: a process starting alongside finds either no file
    or the whole key, never the empty file an O_EXCL create shows until its write lands (it
    would hash every key with an empty secret). Without hard links, the O_EXCL create it is.
    """
    temp = _write_temp(path, data)
    try:
        os.link(temp, path)
    except FileExistsError:
        return  # another process won the race: its key is the one
    except OSError as error:
        if error.errno not in _NO_HARD_LINKS:
            raise
        _create_in_place(path, data)
    finally:
        with suppress(FileNotFoundError):
            os.unlink(temp)
    fsync_dir(path.parent)


def _create_in_place(path: Path, data: bytes) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _write_temp(path: Path, data: bytes) -> Path:
    """`data` in a new fsynced 0600 file beside `path` (same filesystem: it can be renamed)."""
    temp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.new")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    return temp
