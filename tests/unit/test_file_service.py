from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

import pytest

from filewallball.adapters.memory import MemoryCache
from filewallball.domain.errors import (
    DigestMismatch,
    FileNotFound,
    FileTooLarge,
    NotPreviewable,
    TypeNotAllowed,
)
from filewallball.domain.models import ListQuery, Sha256, SortKey, TypePolicy, Visibility
from filewallball.domain.services import SNIFF_BYTES, FileService, UploadRequest
from tests.fakes import FakeBlobStore, FakeClock, FakeFileRepository, FakeSniffer, stream

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 100


@pytest.fixture
def files() -> FakeFileRepository:
    return FakeFileRepository()


@pytest.fixture
def blobs() -> FakeBlobStore:
    return FakeBlobStore()


def make_service(
    files: FakeFileRepository,
    blobs: FakeBlobStore,
    *,
    max_upload_bytes: int = 1000,
    preview_max_bytes: int = 10,
    policy: TypePolicy | None = None,
    cache: MemoryCache | None = None,
) -> FileService:
    return FileService(
        files=files,
        blobs=blobs,
        cache=cache or MemoryCache(),
        sniffer=FakeSniffer(),
        clock=FakeClock(),
        max_upload_bytes=max_upload_bytes,
        preview_max_bytes=preview_max_bytes,
        type_policy=policy or TypePolicy(),
        cache_ttl_seconds=60,
    )


@pytest.fixture
def service(files: FakeFileRepository, blobs: FakeBlobStore) -> FileService:
    return make_service(files, blobs)


def upload(data: bytes, name: str = "a.txt", **kwargs: object) -> UploadRequest:
    return UploadRequest(filename=name, chunks=stream(data, 7), **kwargs)  # type: ignore[arg-type]


async def test_upload_stores_bytes_and_record(
    service: FileService, files: FakeFileRepository, blobs: FakeBlobStore
) -> None:
    record = await service.upload(upload(b"hello world", "../greeting.txt"))
    assert record.size == 11
    assert record.sha256 == hashlib.sha256(b"hello world").hexdigest()
    assert record.filename == ".._greeting.txt"
    assert record.content_type == "text/plain"
    assert record.visibility is Visibility.PRIVATE
    assert blobs.blobs[record.sha256] == b"hello world"
    assert files.records[record.id] == record
    assert await service.get(record.id) == record


async def test_upload_sniffs_type_from_bytes_not_name(service: FileService) -> None:
    record = await service.upload(upload(PNG, "notes.txt"))
    assert record.content_type == "image/png"
    assert not record.previewable


async def test_exact_limit_is_accepted_and_one_byte_over_is_rejected(
    files: FakeFileRepository, blobs: FakeBlobStore
) -> None:
    service = make_service(files, blobs, max_upload_bytes=100)
    record = await service.upload(upload(b"x" * 100))
    assert record.size == 100
    with pytest.raises(FileTooLarge):
        await service.upload(upload(b"x" * 101))
    assert list(files.records) == [record.id]
    assert not blobs.staged


async def test_too_large_stops_reading_at_the_limit(
    files: FakeFileRepository, blobs: FakeBlobStore
) -> None:
    read = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal read
        while True:
            read += 10
            yield b"x" * 10

    service = make_service(files, blobs, max_upload_bytes=100)
    with pytest.raises(FileTooLarge):
        await service.upload(UploadRequest(filename="big", chunks=endless()))
    assert read == 110


async def test_declared_size_over_limit_fails_before_reading(
    files: FakeFileRepository, blobs: FakeBlobStore
) -> None:
    service = make_service(files, blobs, max_upload_bytes=100)

    async def never() -> AsyncIterator[bytes]:
        raise AssertionError("the body must not be read")
        yield b""

    with pytest.raises(FileTooLarge):
        await service.upload(UploadRequest(filename="x", chunks=never(), declared_size=101))


async def test_empty_file_is_a_file(service: FileService, blobs: FakeBlobStore) -> None:
    record = await service.upload(upload(b""))
    assert record.size == 0
    assert record.sha256 == hashlib.sha256(b"").hexdigest()
    assert record.content_type == "text/plain"
    assert blobs.blobs[record.sha256] == b""


async def test_digest_mismatch_stores_nothing(
    service: FileService, files: FakeFileRepository, blobs: FakeBlobStore
) -> None:
    with pytest.raises(DigestMismatch):
        await service.upload(upload(b"abc", expected_sha256=Sha256("0" * 64)))
    assert not files.records and not blobs.blobs and not blobs.staged
    good = Sha256(hashlib.sha256(b"abc").hexdigest())
    assert (await service.upload(upload(b"abc", expected_sha256=good))).sha256 == good


async def test_denied_type_is_rejected_while_streaming(
    files: FakeFileRepository, blobs: FakeBlobStore
) -> None:
    service = make_service(
        files, blobs, max_upload_bytes=10 * SNIFF_BYTES, policy=TypePolicy(denied=("image/*",))
    )
    consumed = 0

    async def big_png() -> AsyncIterator[bytes]:
        nonlocal consumed
        data = PNG + b"\x00" * (4 * SNIFF_BYTES)
        for offset in range(0, len(data), 4096):
            consumed = offset + 4096
            yield data[offset : offset + 4096]

    with pytest.raises(TypeNotAllowed):
        await service.upload(UploadRequest(filename="a.png", chunks=big_png()))
    assert consumed <= SNIFF_BYTES + 4096  # decided on the head, not after the whole body
    assert not files.records and not blobs.blobs


async def test_allow_list(files: FakeFileRepository, blobs: FakeBlobStore) -> None:
    service = make_service(files, blobs, policy=TypePolicy(allowed=("image/*",)))
    assert (await service.upload(upload(PNG))).content_type == "image/png"
    with pytest.raises(TypeNotAllowed):
        await service.upload(upload(b"text"))


async def test_same_content_is_stored_once_and_kept_until_the_last_delete(
    service: FileService, blobs: FakeBlobStore
) -> None:
    first, second = await asyncio.gather(
        service.upload(upload(b"same bytes", "one")), service.upload(upload(b"same bytes", "two"))
    )
    assert first.id != second.id and first.sha256 == second.sha256
    assert len(blobs.blobs) == 1
    await service.delete(first.id)
    assert first.sha256 in blobs.blobs
    with pytest.raises(FileNotFound):
        await service.get(first.id)
    assert (await service.get(second.id)).filename == "two"
    await service.delete(second.id)
    assert not blobs.blobs


async def test_delete_wins_over_a_cached_record(
    files: FakeFileRepository, blobs: FakeBlobStore
) -> None:
    cache = MemoryCache()
    service = make_service(files, blobs, cache=cache)
    record = await service.upload(upload(b"cached"))
    await service.get(record.id)  # fills the cache
    await service.delete(record.id)
    with pytest.raises(FileNotFound):
        await service.get(record.id)
    with pytest.raises(FileNotFound):
        await service.delete(record.id)
    with pytest.raises(FileNotFound):
        await service.open(record.id)


async def test_get_reads_through_the_cache(files: FakeFileRepository, blobs: FakeBlobStore) -> None:
    service = make_service(files, blobs)
    record = await service.upload(upload(b"abc"))
    await service.get(record.id)
    files.records.clear()  # the cache alone answers now
    assert await service.get(record.id) == record


@pytest.mark.parametrize("raw_id", ["nope", "../../etc/passwd", "A" * 22, ""])
async def test_unknown_ids_are_not_found(service: FileService, raw_id: str) -> None:
    with pytest.raises(FileNotFound):
        await service.get(raw_id)
    with pytest.raises(FileNotFound):
        await service.delete(raw_id)


async def test_open_reads_ranges_and_survives_delete(service: FileService) -> None:
    record = await service.upload(upload(b"0123456789"))
    _, reader = await service.open(record.id)
    await service.delete(record.id)
    assert b"".join([c async for c in reader.chunks(2, 5)]) == b"23456"
    await reader.close()


async def test_preview_caps_and_keeps_characters_whole(service: FileService) -> None:
    record = await service.upload(upload("aaaaaaaaaé-and-more".encode()))  # é is bytes 9..10
    preview = await service.preview(record.id)
    assert preview.truncated
    assert preview.text == "a" * 9
    short = await service.upload(upload(b"short"))
    assert (await service.preview(short.id)).text == "short"
    assert not (await service.preview(short.id)).truncated


async def test_preview_of_binary_is_refused(service: FileService) -> None:
    record = await service.upload(upload(PNG))
    with pytest.raises(NotPreviewable):
        await service.preview(record.id)


async def test_list_sorts_filters_and_pages(service: FileService) -> None:
    names = ["b.txt", "a.txt", "c.png"]
    for name in names:
        await service.upload(upload(PNG if name.endswith("png") else name.encode(), name))
    page = await service.list(ListQuery(sort=SortKey.FILENAME, limit=2))
    assert [r.filename for r in page.items] == ["a.txt", "b.txt"]
    assert page.next_cursor is not None
    rest = await service.list(ListQuery(sort=SortKey.FILENAME, limit=2, cursor=page.next_cursor))
    assert [r.filename for r in rest.items] == ["c.png"] and rest.next_cursor is None
    images = await service.list(ListQuery(content_type="image/*"))
    assert [r.filename for r in images.items] == ["c.png"]
    newest = await service.list(ListQuery())
    assert [r.filename for r in newest.items] == ["c.png", "a.txt", "b.txt"]


async def test_recover_collects_unreferenced_blobs(
    service: FileService, files: FakeFileRepository, blobs: FakeBlobStore
) -> None:
    record = await service.upload(upload(b"orphan"))
    # A crash after the record was removed but before its blob was collected:
    await files.remove(record.id)
    assert record.sha256 in blobs.blobs
    assert await service.recover(temp_older_than_seconds=60) == (0, 1)
    assert record.sha256 not in blobs.blobs
