"""The server secret's one home (secret_file.py): made once, 0600; the env wins; atomic installs."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from filewallball.secret_file import (
    FoundSecret,
    SecretSource,
    find_secret,
    install_secret,
    load_or_create_secret,
    read_secret_file,
    remove_secret,
)

ENV = "e" * 40


def _entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_the_first_call_creates_a_private_secret_and_later_calls_read_it(tmp_path: Path) -> None:
    path = tmp_path / "data" / "secret.key"  # its folder does not exist yet
    first = load_or_create_secret(path, env_value=None)
    assert len(first) == 64 and int(first, 16) >= 0  # 32 random bytes, hex
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert _entries(path.parent) == ["secret.key"]  # no temp file left
    assert load_or_create_secret(path, env_value=None) == first
    assert path.read_bytes() == first
    assert find_secret(path, env_value=None) == FoundSecret(
        SecretSource.FILE, key=first, stored=first
    )


def test_a_file_written_by_hand_is_read_without_its_newline(tmp_path: Path) -> None:
    path = tmp_path / "secret.key"
    path.write_bytes(b"my own secret\n")
    assert load_or_create_secret(path, env_value=None) == b"my own secret"
    found = find_secret(path, env_value=None)
    assert (found.key, found.stored) == (b"my own secret", b"my own secret\n")


def test_the_environment_wins_and_no_file_is_created(tmp_path: Path) -> None:
    path = tmp_path / "secret.key"
    assert load_or_create_secret(path, env_value=ENV) == ENV.encode()
    assert not path.exists()
    assert find_secret(path, env_value=ENV) == FoundSecret(SecretSource.ENV, key=ENV.encode())
    path.write_bytes(b"from the file")
    assert load_or_create_secret(path, env_value=ENV) == ENV.encode()
    assert find_secret(path, env_value=ENV).source is SecretSource.ENV


def test_finding_never_creates(tmp_path: Path) -> None:
    path = tmp_path / "secret.key"
    assert find_secret(path, env_value=None) == FoundSecret(SecretSource.NONE)
    assert find_secret(path, env_value="") == FoundSecret(SecretSource.NONE)
    assert read_secret_file(path) is None
    assert _entries(tmp_path) == []


def test_processes_starting_together_all_get_the_same_whole_secret(tmp_path: Path) -> None:
    path = tmp_path / "secret.key"
    start = threading.Barrier(8)
    seen: list[bytes] = []

    def start_up() -> None:
        start.wait()
        seen.append(load_or_create_secret(path, env_value=None))

    threads = [threading.Thread(target=start_up) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(seen) == 8 and len(set(seen)) == 1
    assert len(seen[0]) == 64
    assert _entries(tmp_path) == ["secret.key"]


def test_without_hard_links_the_secret_is_created_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_links(*_: object) -> None:
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    path = tmp_path / "secret.key"
    secret = load_or_create_secret(path, env_value=None)
    assert len(secret) == 64
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert _entries(tmp_path) == ["secret.key"]


def test_install_replaces_the_secret_whole_and_private(tmp_path: Path) -> None:
    path = tmp_path / "secret.key"
    path.write_bytes(b"the old secret")
    path.chmod(0o644)
    inode = path.stat().st_ino
    install_secret(path, b"the new secret\n")
    assert path.read_bytes() == b"the new secret\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.stat().st_ino != inode  # a new file renamed over the old, not rewritten in place
    assert _entries(tmp_path) == ["secret.key"]
    assert load_or_create_secret(path, env_value=None) == b"the new secret"


def test_a_failed_install_leaves_the_old_secret_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "secret.key"
    path.write_bytes(b"the old secret")

    def replace_fails(*_: object) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "replace", replace_fails)
    with pytest.raises(OSError, match="Input/output error"):
        install_secret(path, b"the new secret")
    assert path.read_bytes() == b"the old secret"
    assert _entries(tmp_path) == ["secret.key"]


def test_install_where_there_was_none_and_remove(tmp_path: Path) -> None:
    path = tmp_path / "secret.key"
    install_secret(path, b"restored")
    assert read_secret_file(path) == b"restored"
    remove_secret(path)
    assert read_secret_file(path) is None
    remove_secret(path)  # nothing there: nothing to do
    assert _entries(tmp_path) == []
