"""Reading an archive: members in order, each a plain file with a format name; none extracted."""

# The reader hands each member's bytes to the caller, who writes them where it decides, so no
# name inside an archive can choose a path on disk; no member is ever held whole.
#
# It also bounds what tarfile itself holds: tarfile reads a PAX or GNU long-name header member
# whole, at the size its header declares, before any member is returned. _GuardedInfo refuses
# those headers when they are larger than any FileWallBall archive needs, and refuses the
# header kinds a FileWallBall archive never holds (global PAX headers, GNU sparse files).

from __future__ import annotations

import gzip
import os
import tarfile
import zlib
from collections.abc import AsyncIterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, cast

import anyio
import anyio.to_thread

from filewallball.backup.format import CHUNK_BYTES, BackupError, MemberKind, classify

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
# Only what ArchiveWriter (writer.py) writes: a plain tar, or a gzip-compressed one.
_GZIP_MAGIC = b"\x1f\x8b"
_OTHER_COMPRESSIONS = {b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd"}
_READ_ERRORS = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, OSError)
_TYPE_NAMES = {
    tarfile.SYMTYPE: "a symbolic link",
    tarfile.LNKTYPE: "a hard link",
    tarfile.CHRTYPE: "a character device",
    tarfile.BLKTYPE: "a block device",
    tarfile.DIRTYPE: "a directory",
    tarfile.FIFOTYPE: "a FIFO",
}


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
