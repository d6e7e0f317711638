"""Backup archives on disk: a streaming tar writer, and a strict streaming tar reader.

Neither ever holds a member whole: bytes pass through in 256 KiB chunks and are hashed on the
way. The reader never extracts anything; it hands each member's bytes to the caller, who
writes them where it decides, so no name inside an archive can choose a path on disk.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import secrets
import tarfile
import zlib
from collections.abc import AsyncIterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, cast

import anyio
import anyio.to_thread

from filewallball.domain.backup import BackupError, Digest, MemberKind, classify

CHUNK_BYTES = 256 * 1024
GZIP_LEVEL = 6  # blobs are often compressed already: the top levels cost much and save little
_ZEROS = bytes(tarfile.BLOCKSIZE)
_READ_ERRORS = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, OSError)
_TYPE_NAMES = {
    tarfile.SYMTYPE: "a symbolic link",
    tarfile.LNKTYPE: "a hard link",
    tarfile.CHRTYPE: "a character device",
    tarfile.BLKTYPE: "a block device",
    tarfile.DIRTYPE: "a directory",
    tarfile.FIFOTYPE: "a FIFO",
}


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
        """End the tar, make it durable and move it to its final path (atomic)."""

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
            if self._path.exists():
                raise BackupError(f"{self._path} appeared while the backup was written")
            os.replace(self._temp, self._path)
            _fsync_dir(self._path.parent)

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


@dataclass
class Member:
    """One member of an archive being read; read its bytes with chunks(), once."""

    name: str
    kind: MemberKind
    size: int
    _reader: ArchiveReader
    _file: IO[bytes]

    async def chunks(self) -> AsyncIterator[bytes]:
        remaining = self.size
        while remaining > 0:
            piece = await self._reader.read(self._file, min(CHUNK_BYTES, remaining))
            if not piece:
                raise BackupError(f"the archive is truncated: {self.name} ends early")
            remaining -= len(piece)
            yield piece


class ArchiveReader:
    """The members of an archive in order, each checked before its bytes are read.

    Streaming ("r|*"): nothing is looked up out of order, gzip is detected by its magic bytes,
    and a member that is not a plain file, or whose name is not one of the format's, is refused.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.total = 0
        self._raw: _CountingReader | None = None
        self._tar: tarfile.TarFile | None = None

    @property
    def position(self) -> int:
        """Bytes of the archive file read so far (for progress)."""
        return self._raw.count if self._raw else 0

    async def __aenter__(self) -> ArchiveReader:
        def open_stream() -> None:
            handle = self.path.open("rb")
            self.total = os.fstat(handle.fileno()).st_size
            self._raw = _CountingReader(handle)
            self._tar = tarfile.open(fileobj=self._raw, mode="r|*")  # noqa: SIM115

        try:
            await anyio.to_thread.run_sync(open_stream)
        except FileNotFoundError:
            await self.__aexit__()
            raise BackupError(f"{self.path} does not exist") from None
        except _READ_ERRORS as error:
            await self.__aexit__()
            raise BackupError(f"{self.path} is not a readable tar archive: {error}") from None
        return self

    async def __aexit__(self, *_: object) -> None:
        def close() -> None:
            if self._tar is not None:
                with suppress(*_READ_ERRORS):
                    self._tar.close()
            if self._raw is not None:
                self._raw.close()

        await anyio.to_thread.run_sync(close)

    async def members(self) -> AsyncIterator[Member]:
        assert self._tar is not None, "use the reader as an async context manager"
        tar = self._tar
        while True:
            try:
                info = await anyio.to_thread.run_sync(tar.next)
            except _READ_ERRORS as error:
                raise BackupError(f"the archive is truncated or corrupt: {error}") from None
            if info is None:
                return
            # A stream is read once: forgetting the members read keeps memory flat.
            tar.members.clear()  # type: ignore[attr-defined]  # not in typeshed, but public
            kind = _check(info)
            handle = tar.extractfile(info)
            assert handle is not None  # a regular file, checked above
            yield Member(name=info.name, kind=kind, size=info.size, _reader=self, _file=handle)

    async def read(self, handle: IO[bytes], size: int) -> bytes:
        try:
            return await anyio.to_thread.run_sync(handle.read, size)
        except _READ_ERRORS as error:
            raise BackupError(f"the archive is truncated or corrupt: {error}") from None


def _check(info: tarfile.TarInfo) -> MemberKind:
    """The member's kind; BackupError for anything but a plain file with a format name."""
    name = info.name
    path = PurePosixPath(name)
    if name.startswith("/") or ".." in path.parts or "\\" in name:
        raise BackupError(f"member {name!r} points outside the archive: refused")
    if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
        what = _TYPE_NAMES.get(info.type, f"of tar type {info.type!r}")
        raise BackupError(f"member {name!r} is {what}, not a plain file: refused")
    if info.sparse is not None:
        raise BackupError(f"member {name!r} is a sparse file: refused")
    kind = classify(name)
    limit = kind.max_bytes
    if limit is not None and info.size > limit:
        raise BackupError(f"member {name!r} is {info.size} bytes, over its limit of {limit}")
    return kind


class _CountingReader:
    """A read-only file that counts the bytes read from it."""

    def __init__(self, handle: IO[bytes]) -> None:
        self._handle = handle
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self._handle.read(size)
        self.count += len(data)
        return data

    def close(self) -> None:
        self._handle.close()

    def __getattr__(self, name: str) -> Any:
        # tarfile asks a stream for little else (name, mode); tell() is not used in "r|".
        return getattr(self._handle, name)


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


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
