"""Writing an archive: members streamed into a private temp file, renamed into place at the end."""

from __future__ import annotations

import errno
import gzip
import hashlib
import os
import secrets
import tarfile
from collections.abc import AsyncIterator
from contextlib import suppress
from pathlib import Path
from typing import IO, Any, cast

import anyio
import anyio.to_thread

from filewallball.adapters.disk import fsync_dir
from filewallball.backup.format import CHUNK_BYTES, BackupError, Digest

GZIP_LEVEL = 6  # blobs are often compressed already: the top levels cost much and save little
_ZEROS = bytes(tarfile.BLOCKSIZE)
_NO_HARD_LINKS = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS})


def is_gzip_name(path: Path) -> bool:
    return path.name.endswith((".tar.gz", ".tgz"))


class ArchiveWriter:
    """Members appended in order to a private temp file beside the archive's final path.

    commit() finishes the tar, fsyncs it and renames it into place; until then nothing exists
    at the final path, so a crash or an error never leaves a half-written backup there.
    """

    def __init__(self, *, path: Path, temp: Path, raw: IO[bytes], sink: IO[bytes]) -> None:
        self._path = path
        self._temp = temp
        self._raw = raw
        self._sink = sink
        self._mtime = 0
        self._done = False

    @classmethod
    async def create(cls, path: Path, *, mtime: float) -> ArchiveWriter:
        """Refuses to replace an existing file: a backup never overwrites another."""
        if await anyio.Path(path).exists():
            raise BackupError(f"{path} exists already: choose another name")
        temp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.partial")

        def open_private() -> IO[bytes]:
            # 0600: the archive holds key hashes, possibly the server secret, and every file.
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            return os.fdopen(fd, "wb")

        raw = await anyio.to_thread.run_sync(open_private)
        sink: IO[bytes] = raw
        if is_gzip_name(path):
            # mtime=0: the compressed stream depends on the contents only.
            sink = cast(
                IO[bytes],
                gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=GZIP_LEVEL, mtime=0),
            )
        writer = cls(path=path, temp=temp, raw=raw, sink=sink)
        writer._mtime = int(mtime)
        return writer

    async def add(self, name: str, chunks: AsyncIterator[bytes], *, size: int) -> Digest:
        """Append a member of exactly `size` bytes; its size and SHA-256."""
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = size, self._mtime, 0o600
        # PAX: members over 8 GiB need it (ustar's size field ends there).
        header = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "strict")
        await anyio.to_thread.run_sync(self._sink.write, header)
        digest = hashlib.sha256()
        written = 0
        async for chunk in chunks:
            written += len(chunk)
            if written > size:
                raise BackupError(f"{name} grew while it was being copied (over {size} bytes)")
            await anyio.to_thread.run_sync(_hash_and_write, digest, self._sink, chunk)
        if written != size:
            raise BackupError(
                f"{name} shrank while it was being copied ({written} of {size} bytes)"
            )
        padding = -size % tarfile.BLOCKSIZE
        if padding:
            await anyio.to_thread.run_sync(self._sink.write, _ZEROS[:padding])
        return Digest(size=size, sha256=digest.hexdigest())

    async def add_bytes(self, name: str, data: bytes) -> Digest:
        return await self.add(name, _once(data), size=len(data))

    async def add_file(self, name: str, path: Path) -> Digest:
        """Append a local file (a spooled table) as the member `name`."""
        size = (await anyio.Path(path).stat()).st_size
        return await self.add(name, file_chunks(path), size=size)

    async def commit(self) -> None:
        """End the tar, make it durable and move it to its final path (atomic, never replacing
        a file that appeared there meanwhile)."""

        def finish() -> None:
            # Two zero blocks end a tar; tar(1) also pads to a whole record of 20 blocks.
            self._sink.write(_ZEROS * 2)
            if self._sink is not self._raw:
                self._sink.close()  # the gzip trailer; leaves the raw file open
            end = self._raw.tell()
            self._raw.write(bytes(-end % tarfile.RECORDSIZE))
            self._raw.flush()
            os.fsync(self._raw.fileno())
            self._raw.close()
            _publish_new(self._temp, self._path)
            fsync_dir(self._path.parent)

        await anyio.to_thread.run_sync(finish)
        self._done = True

    async def abort(self) -> None:
        """Remove the temp file (the final path was never touched)."""
        if self._done:
            return
        self._done = True

        def remove() -> None:
            with suppress(OSError):
                self._raw.close()
            with suppress(FileNotFoundError):
                os.unlink(self._temp)

        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(remove)


async def file_chunks(path: Path) -> AsyncIterator[bytes]:
    """A local file's bytes, a chunk at a time."""
    handle = await anyio.to_thread.run_sync(path.open, "rb")
    try:
        while piece := await anyio.to_thread.run_sync(handle.read, CHUNK_BYTES):
            yield piece
    finally:
        await anyio.to_thread.run_sync(handle.close)


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _hash_and_write(digest: Any, sink: IO[bytes], chunk: bytes) -> None:
    digest.update(chunk)
    sink.write(chunk)


def _publish_new(temp: Path, final: Path) -> None:
    """Give `temp` the name `final`, failing if `final` exists (no check-then-rename race).

    A hard link fails atomically when the name is taken; the temp name is then dropped. Where
    the filesystem has no hard links, a rename after a check is the fallback (a narrow race
    remains there).
    """
    try:
        os.link(temp, final)
    except FileExistsError:
        raise BackupError(f"{final} appeared while the backup was written") from None
    except OSError as error:
        if error.errno not in _NO_HARD_LINKS:
            raise
        if final.exists():
            raise BackupError(f"{final} appeared while the backup was written") from None
        os.replace(temp, final)
        return
    os.unlink(temp)
