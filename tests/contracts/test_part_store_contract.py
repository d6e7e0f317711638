"""The PartStore contract, run against the fake, the disk adapter and S3 on a real server
(SeaweedFS); then S3's layout."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from filewallball.adapters.disk_parts import DiskPartStore
from filewallball.adapters.s3 import S3BlobStore, S3Location
from filewallball.adapters.s3_parts import S3PartStore
from filewallball.domain.errors import DependencyUnavailable, FileTooLarge
from filewallball.domain.models import Segment, UploadId
from filewallball.domain.ports import PartStore
from tests.conftest import S3_BUCKET
from tests.fakes import FakePartStore, stream
from tests.s3_server import SeaweedS3

# Small, so that a segment too long is cheap to send to every store (S3's 5 MiB minimum is for
# multipart parts; a segment is an object of its own).
SEGMENT_BYTES = 64 * 1024
# "Not written for that long" with a cutoff a minute ahead: every segment is stale by then,
# whatever the granularity of the store's clock (S3's LastModified is in whole seconds).
EVERYTHING = -60.0
AN_HOUR = 3600.0


def pattern(size: int, seed: int = 0) -> bytes:
    """Bytes that differ at every offset modulo 251, so a misplaced segment shows."""
    return bytes((i + seed) % 251 for i in range(size))


def s3_blobs(server: SeaweedS3, prefix: str) -> S3BlobStore:
    """The blob store whose connection the part store shares, as in the container; closing it
    closes the part store's client too."""
    return S3BlobStore(S3Location(bucket=S3_BUCKET, endpoint_url=server.endpoint, prefix=prefix))


@pytest.fixture(params=["fake", "disk", "s3"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[PartStore]:
    if request.param == "fake":
        yield FakePartStore(segment_bytes=SEGMENT_BYTES)
    elif request.param == "disk":
        yield DiskPartStore(tmp_path / "blobs", segment_bytes=SEGMENT_BYTES)
    else:
        blobs = s3_blobs(request.getfixturevalue("s3_server"), request.getfixturevalue("s3_prefix"))
        yield S3PartStore(blobs.connection, segment_bytes=SEGMENT_BYTES)
        await blobs.aclose()


@pytest.fixture
async def s3(s3_server: SeaweedS3, s3_prefix: str) -> AsyncIterator[S3PartStore]:
    blobs = s3_blobs(s3_server, s3_prefix)
    yield S3PartStore(blobs.connection, segment_bytes=SEGMENT_BYTES)
    await blobs.aclose()


async def write(
    store: PartStore, upload: UploadId, start: int, data: bytes, writer: str = "w1"
) -> Segment:
    """Store `data` as the segment starting at `start`, as the service does."""
    key = Segment.key_for(start, writer)
    assert await store.write(upload, key, stream(data, 1000)) == len(data)
    return Segment(start=start, size=len(data), key=key)


async def read(store: PartStore, upload: UploadId, segments: list[Segment]) -> bytes:
    return b"".join([chunk async for chunk in store.read(upload, segments)])


async def test_segments_read_back_in_the_order_given(store: PartStore) -> None:
    upload = UploadId.new()
    sizes = [SEGMENT_BYTES, 1, 0, 20_000, SEGMENT_BYTES - 1]
    datas = [pattern(size, seed) for seed, size in enumerate(sizes)]
    segments, start = [], 0
    for writer, data in enumerate(datas):  # one writer each: an empty one shares its start
        segments.append(await write(store, upload, start, data, writer=f"w{writer}"))
        start += len(data)
    assert await read(store, upload, segments) == b"".join(datas)
    assert await read(store, upload, segments[::-1]) == b"".join(datas[::-1])
    assert await read(store, upload, segments[3:4]) == datas[3]
    assert await read(store, upload, []) == b""


async def test_chunk_boundaries_do_not_matter(store: PartStore) -> None:
    upload, data = UploadId.new(), pattern(SEGMENT_BYTES)
    for writer, chunk_size in (("a", 13), ("b", 7_000), ("c", SEGMENT_BYTES)):
        key = Segment.key_for(0, writer)
        assert await store.write(upload, key, stream(data, chunk_size)) == len(data)
        assert await read(store, upload, [Segment(0, len(data), key)]) == data


async def test_a_missing_segment_is_unavailable(store: PartStore) -> None:
    upload = UploadId.new()
    stored = await write(store, upload, 0, b"stored")
    missing = Segment(start=6, size=10, key=Segment.key_for(6, "w1"))
    with pytest.raises(DependencyUnavailable):
        await read(store, upload, [stored, missing])
    with pytest.raises(DependencyUnavailable):
        await read(store, UploadId.new(), [stored])  # another upload's key
    with pytest.raises(DependencyUnavailable):
        await read(store, upload, [Segment(start=0, size=0, key="never-written")])


async def test_a_segment_shorter_than_committed_is_unavailable(store: PartStore) -> None:
    upload = UploadId.new()
    stored = await write(store, upload, 0, pattern(1000))
    with pytest.raises(DependencyUnavailable):
        await read(store, upload, [Segment(start=0, size=1001, key=stored.key)])


class Boom(Exception):
    pass


@pytest.mark.parametrize(
    "error", [Boom("mid-way"), FileTooLarge(10), ConnectionResetError("client went away")]
)
async def test_failing_chunks_leave_nothing_and_pass_through(
    store: PartStore, error: Exception
) -> None:
    kept, failed = UploadId.new(), UploadId.new()
    earlier = await write(store, kept, 0, b"kept")

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield pattern(10_000)
        raise error

    for upload in (kept, failed):
        with pytest.raises(type(error)) as raised:
            await store.write(upload, Segment.key_for(4, "w2"), chunks())
        assert raised.value is error
        with pytest.raises(DependencyUnavailable):
            await read(store, upload, [Segment(start=4, size=0, key=Segment.key_for(4, "w2"))])
    assert await read(store, kept, [earlier]) == b"kept"
    assert await store.stale(older_than_seconds=EVERYTHING) == [kept]


async def test_a_cancelled_write_leaves_nothing(store: PartStore) -> None:
    upload, key = UploadId.new(), Segment.key_for(0, "w1")
    stalled = asyncio.Event()

    async def chunks() -> AsyncIterator[bytes]:
        yield pattern(10_000)
        stalled.set()
        await asyncio.Event().wait()  # a client that stops sending
        yield b"never"

    task = asyncio.create_task(store.write(upload, key, chunks()))
    await stalled.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(DependencyUnavailable):
        await read(store, upload, [Segment(start=0, size=0, key=key)])
    assert await store.stale(older_than_seconds=EVERYTHING) == []


async def test_a_segment_longer_than_segment_bytes_is_refused(store: PartStore) -> None:
    upload, key = UploadId.new(), Segment.key_for(0, "w1")
    assert store.segment_bytes == SEGMENT_BYTES
    with pytest.raises(ValueError, match="more than"):
        await store.write(upload, key, stream(pattern(SEGMENT_BYTES + 1), 10_000))
    with pytest.raises(DependencyUnavailable):
        await read(store, upload, [Segment(start=0, size=0, key=key)])
    assert await store.stale(older_than_seconds=EVERYTHING) == []


async def test_delete_removes_those_segments_only(store: PartStore) -> None:
    upload = UploadId.new()
    first = await write(store, upload, 0, b"first")
    second = await write(store, upload, 5, b"second")
    third = await write(store, upload, 11, b"third")
    await store.delete(upload, [first.key, third.key, "never-written"])
    assert await read(store, upload, [second]) == b"second"
    for gone in (first, third):
        with pytest.raises(DependencyUnavailable):
            await read(store, upload, [gone])
    await store.delete(upload, [first.key])  # again: fine
    await store.delete(upload, [])


async def test_remove_takes_every_segment_of_that_upload_only(store: PartStore) -> None:
    removed, other = UploadId.new(), UploadId.new()
    segments = [await write(store, removed, start, b"x") for start in range(3)]
    kept = await write(store, other, 0, b"other")
    await store.remove(removed)
    for segment in segments:
        with pytest.raises(DependencyUnavailable):
            await read(store, removed, [segment])
    assert await read(store, other, [kept]) == b"other"
    assert await store.stale(older_than_seconds=EVERYTHING) == [other]
    await store.remove(removed)  # again: fine
    await store.remove(UploadId.new())  # never written: fine


async def test_stale_lists_uploads_not_written_for_that_long(store: PartStore) -> None:
    assert await store.stale(older_than_seconds=EVERYTHING) == []
    uploads = [UploadId.new() for _ in range(3)]
    for upload in uploads:
        for start in range(2):
            await write(store, upload, start, b"y")
    found = await store.stale(older_than_seconds=EVERYTHING)
    assert sorted(found) == sorted(uploads)
    assert all(type(upload) is UploadId for upload in found)
    assert await store.stale(older_than_seconds=AN_HOUR) == []


# Each list in one test, not parametrized: S3 would open a client per case (0.4 s each).
NOT_UPLOAD_IDS = ["", "../" + "0" * 29, "A" * 32, "0" * 31, "0" * 33, "0" * 32 + "/x", "g" * 32]
NOT_KEYS = ["", ".", "..", ".hidden", "a/b", "../" + "0" * 32, "/etc/passwd"]


async def test_what_is_not_an_upload_id_is_refused(store: PartStore) -> None:
    key = Segment.key_for(0, "w1")
    for upload in map(UploadId, NOT_UPLOAD_IDS):
        with pytest.raises(ValueError, match="upload id"):
            await store.write(upload, key, stream(b"data"))
        with pytest.raises(ValueError, match="upload id"):
            await read(store, upload, [Segment(start=0, size=4, key=key)])
        with pytest.raises(ValueError, match="upload id"):
            await store.delete(upload, [key])
        with pytest.raises(ValueError, match="upload id"):
            await store.remove(upload)
    assert await store.stale(older_than_seconds=EVERYTHING) == []


async def test_what_is_not_a_segment_key_is_refused(store: PartStore) -> None:
    upload = UploadId.new()
    stored = await write(store, upload, 0, b"stored")
    for key in NOT_KEYS:
        with pytest.raises(ValueError, match="segment key"):
            await store.write(upload, key, stream(b"data"))
        with pytest.raises(ValueError, match="segment key"):
            await read(store, upload, [stored, Segment(start=6, size=4, key=key)])
        with pytest.raises(ValueError, match="segment key"):
            await store.delete(upload, [stored.key, key])
    assert await read(store, upload, [stored]) == b"stored"  # nothing deleted before refusing
    assert await store.stale(older_than_seconds=EVERYTHING) == [upload]


# -- S3 ------------------------------------------------------------------------------------------


async def test_s3_layout_is_one_object_per_segment(
    s3: S3PartStore, s3_server: SeaweedS3, s3_prefix: str
) -> None:
    upload = UploadId.new()
    first = await write(s3, upload, 0, b"first")
    empty = await write(s3, upload, 5, b"")
    folder = f"{s3_prefix}tus/{upload}/"
    assert s3_server.keys(s3_prefix) == [folder + first.key, folder + empty.key]
    assert await read(s3, upload, [first, empty]) == b"first"
    await s3.remove(upload)
    assert s3_server.keys(s3_prefix) == []
