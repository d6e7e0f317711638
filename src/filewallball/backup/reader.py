"""Backup archives on disk: a streaming tar writer, and a strict streaming tar reader.

Neither ever holds a member whole: bytes pass through in 256 KiB chunks and are hashed on the
way. The reader never extracts anything; it hands each member's bytes to the caller, who
writes them where it decides, so no name inside an archive can choose a path on disk.

The reader also bounds what tarfile itself holds: tarfile reads a PAX or GNU long-name header
member whole, at the size its header declares, before any member is returned. _GuardedInfo
refuses those headers when they are larger than any FileWallBall archive needs, and refuses
the header kinds a FileWallBall archive never holds (global PAX headers, GNU sparse files).
"""

from __future__ import annotations

import errno
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

from filewallball.adapters.disk import fsync_dir
from filewallball.backup.format import BackupError, Digest, MemberKind, classify

CHUNK_BYTES = 256 * 1024
# The writer's PAX headers hold a path and a size: a few hundred bytes. tarfile reads such a
# header whole (at the size it declares) before any check could run, so this bounds it.
MAX_EXTENDED_HEADER_BYTES = 64 * 1024
# Extended headers in a row before one member (PAX, GNU long name, GNU long link): tarfile
# follows them recursively, each held in memory until the member is reached.
MAX_EXTENDED_HEADERS = 4
_EXTENDED_TYPES = frozenset(
    {tarfile.XHDTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK}
)
_DEPTH = "_filewallball_extended_depth"
# Only what ArchiveWriter writes: a plain tar, or a gzip-compressed one.
_GZIP_MAGIC = b"\x1f\x8b"
_OTHER_COMPRESSIONS = {b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd"}
GZIP_LEVEL = 6  # blobs are often compressed already: the top levels cost much and save little
_ZEROS = bytes(tarfile.BLOCKSIZE)
_READ_ERRORS = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, OSError)
_NO_HARD_LINKS = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS})
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


@dataclass
class Member:
    """One member of an archive being read; read its bytes with chunks(), once."""

    name: str
    kind: MemberKind
    size: int
    _reader: ArchiveReader
    _file: IO[bytes]

    async def chunks(self) -> AsyncIterator[bytes]:
        # Never more than the header declares (tarfile's member file ends there too): the
        # declared size bounds what a caller writes, so it can check for room beforehand.
        remaining = self.size
        while remaining > 0:
            piece = await self._reader.read(self._file, min(CHUNK_BYTES, remaining))
            if not piece:
                raise BackupError(f"the archive is truncated: {self.name} ends early")
            remaining -= len(piece)
            yield piece


class ArchiveReader:
    """The members of an archive in order, each checked before its bytes are read.

    Streaming ("r|", through gzip's reader when the file's magic bytes say gzip: what the
    writer makes, and nothing else): nothing is looked up out of order, and a member that is
    not a plain file, or whose name is not one of the format's, is refused. Oversized extended
    headers are refused before tarfile reads them (_GuardedInfo).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.total = 0
        self._raw: _CountingReader | None = None
        self._gzip: gzip.GzipFile | None = None
        self._tar: tarfile.TarFile | None = None

    @property
    def position(self) -> int:
        """Bytes of the archive file read so far (for progress)."""
        return self._raw.count if self._raw else 0

    async def __aenter__(self) -> ArchiveReader:
        def open_stream() -> None:
            handle = self.path.open("rb")
            self._raw = _CountingReader(handle)
            self.total = os.fstat(handle.fileno()).st_size
            magic = handle.read(6)
            handle.seek(0)
            for prefix, name in _OTHER_COMPRESSIONS.items():
                if magic.startswith(prefix):
                    raise BackupError(
                        f"{self.path} is compressed with {name}: only .tar and .tar.gz archives "
                        "are read (decompress it, or recompress it with gzip)"
                    )
            stream: IO[bytes] = cast(IO[bytes], self._raw)
            if magic.startswith(_GZIP_MAGIC):
                # gzip's own reader, not tarfile's: it never inflates more than it is asked for
                # (tarfile's inflates each 10 KiB read whole: up to 10 MiB of zeros at once).
                self._gzip = gzip.GzipFile(fileobj=stream, mode="rb")
                stream = cast(IO[bytes], self._gzip)
            self._tar = tarfile.open(  # noqa: SIM115 (closed in __aexit__)
                fileobj=stream, mode="r|", tarinfo=_GuardedInfo, bufsize=CHUNK_BYTES
            )

        try:
            await anyio.to_thread.run_sync(open_stream)
        except FileNotFoundError:
            await self.__aexit__()
            raise BackupError(f"{self.path} does not exist") from None
        except BackupError:
            await self.__aexit__()
            raise
        except _Refused as error:
            await self.__aexit__()
            raise BackupError(f"{self.path}: {error}") from None
        except EOFError as error:  # gzip data cut short
            await self.__aexit__()
            raise BackupError(f"{self.path} is truncated or corrupt: {error}") from None
        except _READ_ERRORS as error:
            await self.__aexit__()
            raise BackupError(f"{self.path} is not a readable tar archive: {error}") from None
        return self

    async def __aexit__(self, *_: object) -> None:
        def close() -> None:
            if self._tar is not None:
                with suppress(*_READ_ERRORS):
                    self._tar.close()
            if self._gzip is not None:
                with suppress(*_READ_ERRORS):
                    self._gzip.close()
            if self._raw is not None:
                self._raw.close()

        await anyio.to_thread.run_sync(close)

    async def members(self) -> AsyncIterator[Member]:
        assert self._tar is not None, "use the reader as an async context manager"
        tar = self._tar
        while True:
            try:
                info = await anyio.to_thread.run_sync(tar.next)
            except _Refused as error:
                raise BackupError(str(error)) from None
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


class _Refused(tarfile.ReadError):
    """A header refused before tarfile reads what follows it.

    A ReadError, not a HeaderError: tarfile takes a HeaderError in the middle of an archive
    for its end, and would stop reading quietly.
    """


class _GuardedInfo(tarfile.TarInfo):
    """TarInfo that refuses, before tarfile reads them, headers no FileWallBall archive holds.

    tarfile calls _proc_member on every header it reads (the documented hook for subclasses);
    for PAX and GNU long-name headers it then reads the header's data whole, at its declared
    size, and follows on to the next header recursively.
    """

    def _proc_member(self, tar: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type == tarfile.XGLTYPE:
            raise _Refused("the archive holds a global PAX header: refused")
        if self.type == tarfile.GNUTYPE_SPARSE:
            raise _Refused(f"member {self.name!r} is a sparse file: refused")
        if self.type not in _EXTENDED_TYPES:
            return _builtin_proc_member(self, tar)
        if self.size > MAX_EXTENDED_HEADER_BYTES:
            raise _Refused(
                f"the archive holds an extended tar header (type {self.type.decode()!r}) of "
                f"{self.size} bytes, over the limit of {MAX_EXTENDED_HEADER_BYTES}: refused"
            )
        depth: int = getattr(tar, _DEPTH, 0)
        if depth >= MAX_EXTENDED_HEADERS:
            raise _Refused(
                f"the archive holds more than {MAX_EXTENDED_HEADERS} extended tar headers in a "
                "row: refused"
            )
        setattr(tar, _DEPTH, depth + 1)
        try:
            return _builtin_proc_member(self, tar)
        finally:
            setattr(tar, _DEPTH, depth)

    # PAX headers can describe a GNU sparse file; the 1.0 format's map is read at the length it
    # declares. A backup holds no sparse files: refuse them before their maps are read.
    def _proc_gnusparse_00(self, *_: object) -> None:
        raise _Refused("the archive holds a GNU sparse file: refused")

    _proc_gnusparse_01 = _proc_gnusparse_00
    _proc_gnusparse_10 = _proc_gnusparse_00


def _builtin_proc_member(info: tarfile.TarInfo, tar: tarfile.TarFile) -> tarfile.TarInfo:
    result: tarfile.TarInfo = tarfile.TarInfo._proc_member(info, tar)  # type: ignore[attr-defined]
    return result


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
