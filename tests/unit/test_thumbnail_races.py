"""A file deleted while its thumbnail renders: no 200 for it, and no rendition left for ever."""

from __future__ import annotations

import asyncio

import pytest

from filewallball.domain.errors import FileNotFound, ThumbnailTimedOut
from filewallball.domain.models import ImageFormat, ThumbnailSize, ThumbnailStatus
from filewallball.domain.thumbnails import ThumbnailService
from tests.fakes import FakeBlobStore, FakeFileRepository
from tests.unit.test_file_service import ADMIN, PNG, make_service, upload


class HeldRenderer:
    """Renders only when told to, so a delete can land in the middle."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def render(self, source: bytes, *, longest_side: int, format: ImageFormat) -> bytes:
        self.started.set()
        await self.release.wait()
        return b"rendition of " + source[:8]


async def test_a_delete_during_an_on_demand_render_wins() -> None:
    files, blobs = FakeFileRepository(), FakeBlobStore()
    service = make_service(files, blobs)
    renderer = HeldRenderer()
    thumbnails = ThumbnailService(
        files=service, records=files, blobs=blobs, renderer=renderer, max_source_bytes=10**6
    )
    record = await service.upload(ADMIN, upload(PNG, "a.png"))
    rendering = asyncio.create_task(
        thumbnails.thumbnail(
            ADMIN, record.id, size=ThumbnailSize.SMALL, image_format=ImageFormat.WEBP
        )
    )
    await renderer.started.wait()
    await service.delete(ADMIN, record.id)  # the blob is collected: bytes and renditions
    renderer.release.set()
    with pytest.raises(FileNotFound):
        await rendering
    assert blobs.blobs == {}  # the rendition written after the collection went too


class SlowOnceRenderer:
    """Too slow for the first rendition asked, fine afterwards."""

    def __init__(self) -> None:
        self.calls = 0

    async def render(self, source: bytes, *, longest_side: int, format: ImageFormat) -> bytes:
        self.calls += 1
        if self.calls == 1:
            raise ThumbnailTimedOut("rendering took longer than 2 seconds")
        return b"rendition"


async def test_one_rendition_timing_out_does_not_fail_every_size() -> None:
    files, blobs = FakeFileRepository(), FakeBlobStore()
    service = make_service(files, blobs)
    thumbnails = ThumbnailService(
        files=service,
        records=files,
        blobs=blobs,
        renderer=SlowOnceRenderer(),
        max_source_bytes=10**6,
    )
    record = await service.upload(ADMIN, upload(PNG, "a.png"))
    with pytest.raises(ThumbnailTimedOut):
        await thumbnails.thumbnail(
            ADMIN, record.id, size=ThumbnailSize.LARGE, image_format=ImageFormat.AVIF
        )
    assert files.records[record.id].thumbnail_status is ThumbnailStatus.PENDING
    small = await thumbnails.thumbnail(
        ADMIN, record.id, size=ThumbnailSize.SMALL, image_format=ImageFormat.WEBP
    )
    assert small.data == b"rendition"
    assert files.records[record.id].thumbnail_status is ThumbnailStatus.READY
