"""Where uploads are staged: a folder per process under `<root>/.tmp`, locked while it lives.

A process that dies mid-upload (killed, OOM, a node lost) leaves its temp files behind. Each
process stages into a folder of its own and holds an exclusive `flock` on the folder's lock file
for as long as it runs; the kernel drops the lock when the process dies, however it dies. So a
sweep, at start or by the maintenance job, on any replica sharing the volume, can tell a dead
process's folder (its lock can be taken) from a live one's, and remove it whatever its age. A
folder appears under its final name already locked (made under a temporary name, then renamed),
so no sweep can take it for a dead one while it is being made.

This needs a filesystem whose `flock` is seen by every process using the volume: a local disk,
a hostPath or a block volume shared by pods on one node; not every network filesystem.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import shutil
import socket
import time
from contextlib import suppress
from pathlib import Path

LOCK_NAME = ".lock"
_NEW_PREFIX = ".new-"


class ProcessStaging:
    """This process's staging folder under `tmp`, made and locked on first use (again after a
    fork: a child must not stage into its parent's folder)."""

    def __init__(self, tmp: Path) -> None:
        self._tmp = tmp
        self._pid: int | None = None
        self._folder: Path | None = None
        self._lock_fd = -1

    def folder(self) -> Path:
        """The folder, made now if this process has none yet (blocking: call it off the loop)."""
        if self._pid != os.getpid() or self._folder is None:
            self._make()
        assert self._folder is not None
        return self._folder

    @property
    def current(self) -> Path | None:
        """The folder, if this process made one (no I/O)."""
        return self._folder if self._pid == os.getpid() else None

    def _make(self) -> None:
        self._tmp.mkdir(parents=True, exist_ok=True)
        name = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
        new = self._tmp / f"{_NEW_PREFIX}{name}"
        new.mkdir()
        fd = os.open(new / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            final = self._tmp / name
            os.rename(new, final)
        except BaseException:
            os.close(fd)
            shutil.rmtree(new, ignore_errors=True)
            raise
        # A forked child's inherited descriptor of its parent's lock stays open: closing it
        # would release nothing (the parent holds the lock through its own descriptor).
        self._folder, self._lock_fd, self._pid = final, fd, os.getpid()


def sweep_dead(tmp: Path, *, own: Path | None, unlocked_older_than_seconds: float) -> int:
    """Remove the staging folders of dead processes (their lock can be taken), and folders with
    no lock older than `unlocked_older_than_seconds` (left half-made); the files removed."""
    try:
        entries = list(os.scandir(tmp))
    except FileNotFoundError:
        return 0
    removed = 0
    cutoff = time.time() - unlocked_older_than_seconds
    for entry in entries:
        if not entry.is_dir(follow_symlinks=False) or (own is not None and entry.path == str(own)):
            continue
        folder = Path(entry.path)
        with suppress(FileNotFoundError):
            if entry.name.startswith(_NEW_PREFIX) or not (folder / LOCK_NAME).exists():
                if entry.stat().st_mtime < cutoff:
                    removed += _remove(folder)
                continue
            fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CLOEXEC)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # its process is alive
                removed += _remove(folder)
            finally:
                os.close(fd)
    return removed


def _remove(folder: Path) -> int:
    files = sum(1 for entry in os.scandir(folder) if entry.name != LOCK_NAME)
    shutil.rmtree(folder, ignore_errors=True)
    return files
