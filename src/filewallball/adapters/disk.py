"""Content-addressed blobs on a local filesystem: temp file, fsync, atomic rename."""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import aiofiles
import aiofiles.os
import anyio
import anyio.to_thread

from filewallball.adapters.staging import LOCK_NAME, ProcessStaging, sweep_dead
from filewallball.domain.errors import DependencyUnavailable, StorageFull
from filewallball.domain.models import Sha256
from filewallball.domain.ports import BlobReader, BlobStore, StagedBlob

# Small chunks (a multipart parser yields a few KiB at a time) are gathered into ~1 MiB writes:
# far fewer thread hops, and memory stays bounded by this plus one incoming chunk.
WRITE_BUFFER_BYTES = 1024 * 1024
_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024
READ_CHUNK_BYTES = 256 * 1024
TEMP_DIR = ".tmp"
_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


@contextmanager
def storage_errors() -> Iterator[None]:
    """Turn filesystem errors into domain errors: full → StorageFull, else unavailable."""
    try:
        yield
    except OSError as error:
        if error.errno in _FULL:
            raise StorageFull("the blob storage is full") from error
        raise DependencyUnavailable("blob storage", f"blob storage failed: {error}") from error


def _blob_path(root: Path, sha256: Sha256) -> Path:
    # Re-validating keeps any string that is not 64 lowercase hex digits out of the path.
    digest = Sha256(sha256)
    return root / digest[:2] / digest[2:4] / digest


def fsync_dir(path: Path) -> None:
    """Make a folder's entries (a rename, a new file) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(temp: Path, final: Path, root: Path) -> None:
    fanout = final.parent
    fresh = not fanout.is_dir()
    if fresh:
        fanout.mkdir(parents=True, exist_ok=True)
    os.replace(temp, final)
    fsync_dir(fanout)
    if fresh:
        # New fan-out folders must be durable too, or the renamed blob could vanish with them.
        fsync_dir(fanout.parent)
        fsync_dir(root)


async def _remove_quietly(path: Path) -> None:
    # Shielded: a cancelled upload must still clean up; a failure here is left to `sweep`.
    with anyio.CancelScope(shield=True), suppress(OSError):
        await aiofiles.os.remove(path)


class DiskStagedBlob(StagedBlob):
    """A fsynced temp file under `<root>/.tmp`, waiting to be renamed onto its hash."""

    def __init__(self, *, root: Path, temp: Path, size: int) -> None:
        self._root = root
        self._temp = temp
        self.size = size
        self._done = False
        self._published: Sha256 | None = None

    async def publish(self, sha256: Sha256) -> None:
        """Rename onto `<root>/ab/cd/<sha>` and fsync the folder; again with the same sha: no-op."""
        final = _blob_path(self._root, sha256)
        if self._published == sha256:
            return
        if self._done:
            raise RuntimeError("this staged blob was already published or discarded")
        with storage_errors():
            await anyio.to_thread.run_sync(_publish, self._temp, final, self._root)
        self._done = True
        self._published = sha256

    async def discard(self) -> None:
        """Remove the temp file unless published; safe to call more than once."""
        if not self._done:
            self._done = True
            await _remove_quietly(self._temp)


class DiskBlobReader(BlobReader):
    """An open file descriptor: POSIX keeps its bytes readable after the blob is unlinked."""

    def __init__(self, *, fd: int, size: int, path: str | None = None) -> None:
        self._fd = fd
        self.size = size
        self.path = path

    async def chunks(self, start: int, length: int) -> AsyncIterator[bytes]:
        """The bytes `start .. start+length`, cut at the end of the blob, 256 KiB at a time."""
        if start < 0 or length < 0:
            raise ValueError(f"not a byte range: start={start}, length={length}")
        offset, end = start, min(start + length, self.size)
        while offset < end:
            # Checked before every read: a closed fd number may already belong to another file.
            if self._fd < 0:
                raise RuntimeError("the blob reader is closed")
            with storage_errors():
                piece = await anyio.to_thread.run_sync(
                    os.pread, self._fd, min(READ_CHUNK_BYTES, end - offset), offset
                )
            if not piece:
                return
            offset += len(piece)
            yield piece

    async def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            # In the loop: closing a read-only descriptor writes nothing back, so it does not
            # wait on the disk, and a thread hop would cost more than the call.
            with suppress(OSError):
                os.close(fd)


class DiskBlobStore(BlobStore):
    """Blobs at `<root>/ab/cd/<sha256>`, staged in this process's folder under `<root>/.tmp`
    (adapters/staging.py) on the same filesystem."""

    def __init__(self, root: Path) -> None:
        # Absolute, so a reader's path (sent by the server itself) does not depend on the cwd.
        self._root = root.absolute()
        self._tmp = self._root / TEMP_DIR
        self._staging = ProcessStaging(self._tmp)

    async def stage(self, chunks: AsyncIterator[bytes]) -> StagedBlob:
        """Write and fsync a temp file; on any error it is removed and the error re-raised as is."""
        folder = self._staging.current
        if folder is None:
            with storage_errors():
                folder = await anyio.to_thread.run_sync(self._staging.folder)
        temp = TempFile(folder / secrets.token_hex(16))
        try:
            size = await write_all(temp, chunks)
        except BaseException:
            # Shielded: a cancelled upload must still clean up; a failure here is left to
            # `sweep`, and must not hide the error that got us here.
            with anyio.CancelScope(shield=True), suppress(OSError):
                await anyio.to_thread.run_sync(temp.abandon)
            raise
        return DiskStagedBlob(root=self._root, temp=temp.path, size=size)

    async def open(self, sha256: Sha256) -> BlobReader | None:
        """The blob opened now, or None when there is no such blob."""
        path = _blob_path(self._root, sha256)
        with storage_errors():
            # In the event loop: an open and an fstat of one file on the local blob volume
            # take microseconds, a hop to a worker thread and back about 80 µs of CPU (a tenth
            # of a small download's). Reading the bytes still goes to threads.
            opened = _open(path)
        if opened is None:
            return None
        fd, size = opened
        return DiskBlobReader(fd=fd, size=size, path=str(path))

    async def delete(self, sha256: Sha256) -> None:
        """Unlink the blob (a missing one is fine); open readers keep reading."""
        # Empty fan-out folders stay: removing them would race with a publish creating them.
        path = _blob_path(self._root, sha256)
        with storage_errors(), suppress(FileNotFoundError):
            await aiofiles.os.remove(path)

    async def exists(self, sha256: Sha256) -> bool:
        path = _blob_path(self._root, sha256)
        with storage_errors():
            try:
                await aiofiles.os.stat(path)
            except FileNotFoundError:
                return False
        return True

    async def sweep(self, *, older_than_seconds: float) -> int:
        """Remove what dead processes staged, whatever its age, and temp files of live ones not
        modified for `older_than_seconds` (an upload in progress keeps its file fresh)."""
        with storage_errors():
            return await anyio.to_thread.run_sync(self._sweep, older_than_seconds)

    def _sweep(self, older_than_seconds: float) -> int:
        own = self._staging.current
        removed = sweep_dead(self._tmp, own=own, unlocked_older_than_seconds=older_than_seconds)
        removed += _sweep(self._tmp, older_than_seconds)
        try:
            folders = [Path(e.path) for e in os.scandir(self._tmp) if e.is_dir()]
        except FileNotFoundError:
            return removed
        for folder in folders:  # live processes' folders (ours included): only stale files
            removed += _sweep(folder, older_than_seconds)
        return removed

    async def free_bytes(self) -> int | None:
        try:
            usage = await anyio.to_thread.run_sync(shutil.disk_usage, self._root)
        except OSError:
            return None
        return int(usage.free)

    async def aclose(self) -> None:
        """Nothing to close: every reader owns its descriptor."""

    async def download_url(
        self, sha256: Sha256, *, content_type: str, content_disposition: str
    ) -> str | None:
        return None  # a local file: the server sends it (or nginx, by X-Accel-Redirect)

    async def check_writable(self) -> None:
        """Write, fsync and remove a probe file; DependencyUnavailable (even when full) if not."""
        try:
            await anyio.to_thread.run_sync(_probe, self._tmp)
        except OSError as error:
            raise DependencyUnavailable(
                "blob storage", f"blob storage is not writable: {error}"
            ) from error


class TempFile:
    """A temp file written from worker threads, one thread hop at a time: created by the first
    write (its folder too, when missing), fsynced and closed by `finish`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = -1

    def write(self, pieces: list[bytes]) -> None:
        if self._fd < 0:
            self._fd = self._create()
        _write_fully(self._fd, pieces)

    def finish(self, pieces: list[bytes]) -> None:
        """Write the last pieces, fsync and close: the bytes are durable when this returns."""
        self.write(pieces)
        os.fsync(self._fd)
        fd, self._fd = self._fd, -1
        os.close(fd)

    def abandon(self) -> None:
        """Close and remove the file, whatever state it is in."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            with suppress(OSError):
                os.close(fd)
        with suppress(FileNotFoundError):
            os.unlink(self.path)

    def _create(self) -> int:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            return os.open(self.path, flags, 0o666)
        except FileNotFoundError:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return os.open(self.path, flags, 0o666)


def _write_fully(fd: int, pieces: list[bytes]) -> None:
    """Write every piece, in order, with as few system calls as the kernel allows."""
    views = [memoryview(piece) for piece in pieces if piece]
    first = 0
    while first < len(views):
        written = os.writev(fd, views[first : first + _IOV_MAX])
        while first < len(views) and written >= len(views[first]):
            written -= len(views[first])
            first += 1
        if written:
            views[first] = views[first][written:]


async def write_all(temp: TempFile, chunks: AsyncIterator[bytes]) -> int:
    """Copy every chunk to `temp`, then fsync and close it; the byte count.

    Chunks are gathered (not copied) until they reach WRITE_BUFFER_BYTES, then written in one
    thread hop; the last ones are written, fsynced and closed in one more. A file that fits in
    the buffer takes a single hop. Only the writes are wrapped into domain errors: whatever the
    caller's iterator raises (FileTooLarge, TypeNotAllowed, a client disconnect) must reach the
    caller unchanged.
    """
    size = 0
    pending: list[bytes] = []
    pending_bytes = 0
    async for chunk in chunks:
        # Written when the next chunk comes: the last buffer goes with the fsync.
        if pending_bytes >= WRITE_BUFFER_BYTES:
            with storage_errors():
                await anyio.to_thread.run_sync(temp.write, pending)
            size += pending_bytes
            pending, pending_bytes = [], 0
        pending.append(chunk)
        pending_bytes += len(chunk)
    with storage_errors():
        await anyio.to_thread.run_sync(temp.finish, pending)
    return size + pending_bytes


def _open(path: Path) -> tuple[int, int] | None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        return fd, os.fstat(fd).st_size
    except BaseException:
        os.close(fd)
        raise


def _sweep(tmp: Path, older_than_seconds: float) -> int:
    cutoff = time.time() - older_than_seconds
    try:
        entries = list(os.scandir(tmp))
    except FileNotFoundError:
        return 0
    removed = 0
    for entry in entries:
        # Vanished meanwhile: its upload finished or was discarded; not ours to count.
        with suppress(FileNotFoundError):
            stale = entry.stat().st_mtime < cutoff
            if entry.is_file(follow_symlinks=False) and entry.name != LOCK_NAME and stale:
                os.unlink(entry.path)
                removed += 1
    return removed


def _probe(tmp: Path) -> None:
    tmp.mkdir(parents=True, exist_ok=True)
    probe = tmp / f"probe-{secrets.token_hex(8)}"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, b"ok")
        os.fsync(fd)
    finally:
        os.close(fd)
        os.unlink(probe)
