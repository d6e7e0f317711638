"""Thumbnails of image files: rendered once per size and format, stored beside the bytes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from filewallball.domain.errors import (
    FileNotFound,
    NotAnImage,
    ThumbnailFailed,
    ThumbnailTimedOut,
)
from filewallball.domain.jobs import JobPayload, JobRegistry
from filewallball.domain.models import (
    FileId,
    FileRecord,
    ImageFormat,
    Sha256,
    ThumbnailSize,
    ThumbnailStatus,
    thumbnail_key,
)
from filewallball.domain.ports import (
    BlobStore,
    FileRepository,
    ThumbnailRenderer,
)
from filewallball.domain.security import Principal
from filewallball.domain.services import FileService
from filewallball.domain.uploads import THUMBNAIL_JOB


@dataclass(frozen=True, slots=True)
class Thumbnail:
    record: FileRecord
    data: bytes
    format: ImageFormat
    size: ThumbnailSize

    @property
    def etag(self) -> str:
        """Strong: the same content, size and format always render the same bytes."""
        return f'"{self.record.sha256}-{self.size.value}-{self.format.value}"'


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


class ThumbnailService:
    """Serve a thumbnail from storage, or render it now (the job may not have run yet)."""

    def __init__(
        self,
        *,
        files: FileService,
        records: FileRepository,
        blobs: BlobStore,
        renderer: ThumbnailRenderer,
        max_source_bytes: int,
    ) -> None:
        self._files = files
        self._records = records
        self._blobs = blobs
        self._renderer = renderer
        self._max_source_bytes = max_source_bytes

    async def thumbnail(
        self, principal: Principal, raw_id: str, *, size: ThumbnailSize, image_format: ImageFormat
    ) -> Thumbnail:
        record = await self._files.get(principal, raw_id)
        if not record.thumbnailable:
            raise NotAnImage(f"files of type {record.content_type} have no thumbnail")
        if record.thumbnail_status is ThumbnailStatus.FAILED:
            raise ThumbnailFailed("this image could not be rendered")
        key = thumbnail_key(record.sha256, size, image_format)
        data = await self._read(key, limit=None)
        if data is None:
            data = await self.render(record, size=size, image_format=image_format)
            # A render takes a while: a file deleted meanwhile is not answered with a 200.
            record = await self._files.get(principal, raw_id)
        return Thumbnail(record=record, data=data, format=image_format, size=size)

    async def render(
        self, record: FileRecord, *, size: ThumbnailSize, image_format: ImageFormat
    ) -> bytes:
        """Render and store one rendition; mark the record ready, or failed for good."""
        if record.size > self._max_source_bytes:
            await self._mark(record, ThumbnailStatus.FAILED)
            raise ThumbnailFailed(f"images over {self._max_source_bytes} bytes get no thumbnail")
        source = await self._read(record.sha256, limit=record.size)
        if source is None:
            raise FileNotFound(f"no file {record.id!r}")
        try:
            data = await self._renderer.render(
                source, longest_side=size.longest_side, format=image_format
            )
        except ThumbnailTimedOut:
            raise  # one slow rendition: every size of the file is not failed for it
        except ThumbnailFailed:
            await self._mark(record, ThumbnailStatus.FAILED)
            raise
        key = thumbnail_key(record.sha256, size, image_format)
        staged = await self._blobs.stage(_once(data))
        try:
            await staged.publish(key)
        finally:
            await staged.discard()
        if not await self._blobs.exists(record.sha256):
            # The file was deleted, and its blob collected (renditions included), while this
            # rendered: this rendition would be left for ever.
            await self._blobs.delete(key)
            raise FileNotFound(f"no file {record.id!r}")
        await self._mark(record, ThumbnailStatus.READY)
        return data

    async def _read(self, key: Sha256, *, limit: int | None) -> bytes | None:
        reader = await self._blobs.open(key)
        if reader is None:
            return None
        try:
            length = reader.size if limit is None else min(limit, reader.size)
            return b"".join([chunk async for chunk in reader.chunks(0, length)])
        finally:
            await reader.close()

    async def _mark(self, record: FileRecord, status: ThumbnailStatus) -> None:
        if record.thumbnail_status is not status:
            await self._records.set_thumbnail_status(record.id, status)


# Rendered ahead of the first request; AVIF (slow to encode) is rendered on demand only.
PRERENDERED = [
    (size, fmt) for size in ThumbnailSize for fmt in (ImageFormat.WEBP, ImageFormat.JPEG)
]


def register_thumbnail_job(
    registry: JobRegistry, *, records: FileRepository, thumbnails: ThumbnailService
) -> None:
    """The job that renders an image's thumbnails after its upload (idempotent)."""

    async def render_all(payload: JobPayload) -> None:
        file_id = FileId.parse(str(payload.get("file_id", "")))
        record = await records.get(file_id) if file_id is not None else None
        if (
            record is None
            or not record.thumbnailable
            or record.thumbnail_status is ThumbnailStatus.FAILED
        ):
            return  # deleted meanwhile, or nothing to do: done, not failed
        for size, image_format in PRERENDERED:
            try:
                await thumbnails.render(record, size=size, image_format=image_format)
            except ThumbnailFailed:
                return  # marked failed; a retry would fail the same way

    registry.register(THUMBNAIL_JOB, render_all)
