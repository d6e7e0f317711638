"""Resumable uploads' segments on the blobs' volume: `<root>/.tus/<upload>/<key>`, one file per
segment, written whole and fsynced before its key is committed (adapters/disk.py's writes)."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import suppress
from pathlib import Path

import anyio
import anyio.to_thread

from filewallball.adapters.disk import (
    READ_CHUNK_BYTES,
    TempFile,
    fsync_dir,
    storage_errors,
    write_all,
)
from filewallball.domain.errors import DependencyUnavailable
from filewallball.domain.models import Segment, UploadId
from filewallball.domain.ports import PartStore

PARTS_DIR = ".tus"
# A dropped connection keeps what was stored up to the last segment: 64 MiB on a local disk.
DISK_SEGMENT_BYTES = 64 * 1024 * 1024


class DiskPartStore(PartStore):
    """Segments under `<root>/.tus`, on the blobs' filesystem (shared by the replicas)."""

    def __init__(self, root: Path, *, segment_bytes: int = DISK_SEGMENT_BYTES) -> None:
        self._root = root.absolute() / PARTS_DIR
        self.segment_bytes = segment_bytes

    def _folder(self, upload: UploadId) -> Path:
        parsed = UploadId.parse(upload)  # nothing but 32 hex digits reaches a path
        if parsed is None:
            raise ValueError(f"not an upload id: {upload!r}")
        return self._root / parsed

    def _path(self, upload: UploadId, key: str) -> Path:
        # One name of its own: a key like `../../ab/cd/<sha>` would reach the blobs.
        if not key or "/" in key or key.startswith("."):
            raise ValueError(f"not a segment key: {key!r}")
        return self._folder(upload) / key

    async def write(self, upload: UploadId, key: str, chunks: AsyncIterator[bytes]) -> int:
        path = self._path(upload, key)
        folder = path.parent
        temp = TempFile(path)
        try:
            size = await write_all(temp, _at_most(self.segment_bytes, chunks))
            with storage_errors():
                await anyio.to_thread.run_sync(_durable_entry, folder)
        except BaseException:
            with anyio.CancelScope(shield=True), suppress(OSError):
                await anyio.to_thread.run_sync(temp.abandon)
                # The folder the write made, if no other segment is in it: `stale` would list
                # an empty folder as an upload of its own.
                await anyio.to_thread.run_sync(folder.rmdir)
            raise
        return size

    async def read(self, upload: UploadId, segments: Sequence[Segment]) -> AsyncIterator[bytes]:
        paths = [self._path(upload, segment.key) for segment in segments]
        for segment, path in zip(segments, paths, strict=True):
            with storage_errors():
                try:
                    fd = await anyio.to_thread.run_sync(os.open, path, os.O_RDONLY)
                except FileNotFoundError as error:
                    raise DependencyUnavailable(
                        "blob storage", f"segment {segment.key} of upload {upload} is missing"
                    ) from error
            try:
                offset = 0
                while offset < segment.size:
                    with storage_errors():
                        piece = await anyio.to_thread.run_sync(
                            os.pread, fd, min(READ_CHUNK_BYTES, segment.size - offset), offset
                        )
                    if not piece:
                        raise DependencyUnavailable(
                            "blob storage",
                            f"segment {segment.key} of upload {upload} is shorter than committed",
                        )
                    offset += len(piece)
                    yield piece
            finally:
                os.close(fd)

    async def delete(self, upload: UploadId, keys: Sequence[str]) -> None:
        paths = [self._path(upload, key) for key in keys]

        def unlink_all() -> None:
            for path in paths:
                with suppress(FileNotFoundError):
                    os.unlink(path)

        with storage_errors():
            await anyio.to_thread.run_sync(unlink_all)

    async def remove(self, upload: UploadId) -> None:
        folder = self._folder(upload)
        with storage_errors():
            await anyio.to_thread.run_sync(_remove_tree, folder)

    async def stale(self, *, older_than_seconds: float) -> list[UploadId]:
        with storage_errors():
            return await anyio.to_thread.run_sync(self._stale, older_than_seconds)

    def _stale(self, older_than_seconds: float) -> list[UploadId]:
        cutoff = time.time() - older_than_seconds
        try:
            entries = list(os.scandir(self._root))
        except FileNotFoundError:
            return []
        found = []
        for entry in entries:
            upload = UploadId.parse(entry.name)
            if upload is None or not entry.is_dir(follow_symlinks=False):
                continue
            with suppress(FileNotFoundError):
                newest = max(
                    [child.stat().st_mtime for child in os.scandir(entry.path)],
                    default=entry.stat().st_mtime,
                )
                if newest < cutoff:
                    found.append(upload)
        return found


async def _at_most(limit: int, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The chunks, until they pass `limit` bytes: then ValueError (the caller cut too long)."""
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise ValueError(f"a segment of more than {limit} bytes")
        yield chunk


def _durable_entry(folder: Path) -> None:
    """The new segment's name, and its folder's, survive a crash."""
    fsync_dir(folder)
    fsync_dir(folder.parent)


def _remove_tree(folder: Path) -> None:
    with suppress(FileNotFoundError):
        shutil.rmtree(folder)
