"""ResumableService on fakes: segments, leases, dropped connections, outages, expiry."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta

import pytest

from filewallball.adapters.clamd import NoScanner
from filewallball.domain.access import Auditor
from filewallball.domain.errors import (
    ChecksumMismatch,
    ClientDisconnected,
    DependencyUnavailable,
    LengthExceeded,
    OffsetMismatch,
    QuotaExceeded,
    UploadExpired,
    UploadLocked,
    UploadNotFound,
)
from filewallball.domain.models import TypePolicy
from filewallball.domain.resumable import Checksum, Creation, ResumableLimits, ResumableService
from filewallball.domain.security import Role
from filewallball.domain.uploads import Uploader, UploadLimits
from tests.fakes import (
    FakeAuditLog,
    FakeBlobStore,
    FakeClock,
    FakeFileRepository,
    FakePartStore,
    FakeResumableRepository,
    FakeSniffer,
    FakeTaskQueue,
    FakeUsageRepository,
    stream,
)
from tests.unit.test_file_service import ALICE, BOB, principal


@dataclass
class World:
    service: ResumableService
    files: FakeFileRepository
    blobs: FakeBlobStore
    parts: FakePartStore
    uploads: FakeResumableRepository
    usage: FakeUsageRepository
    clock: FakeClock
    audit: FakeAuditLog = field(default_factory=FakeAuditLog)


def make_world(*, segment_bytes: int = 10, max_upload_bytes: int = 1000, **limits: float) -> World:
    files, blobs, clock = FakeFileRepository(), FakeBlobStore(), FakeClock()
    parts, uploads = FakePartStore(segment_bytes=segment_bytes), FakeResumableRepository()
    usage, audit = FakeUsageRepository(files), FakeAuditLog()
    auditor = Auditor(log=audit, clock=clock)
    upload_limits = UploadLimits(
        max_upload_bytes=max_upload_bytes, preview_max_bytes=10, type_policy=TypePolicy()
    )
    uploader = Uploader(
        files=files,
        blobs=blobs,
        sniffer=FakeSniffer(),
        clock=clock,
        usage=usage,
        scanner=NoScanner(),
        auditor=auditor,
        limits=upload_limits,
        jobs=FakeTaskQueue(),
    )
    service = ResumableService(
        uploads=uploads,
        parts=parts,
        uploader=uploader,
        clock=clock,
        auditor=auditor,
        limits=ResumableLimits(**limits),  # type: ignore[arg-type]
        upload_limits=upload_limits,
    )
    return World(service, files, blobs, parts, uploads, usage, clock, audit)


async def cut_after(data: bytes, chunk: int = 4) -> AsyncIterator[bytes]:
    """`data`, then the connection drops."""
    async for piece in stream(data, chunk):
        yield piece
    raise ClientDisconnected("gone")


def sha1(data: bytes) -> Checksum:
    return Checksum("sha1", hashlib.sha1(data).digest())


async def test_a_long_body_is_committed_segment_by_segment() -> None:
    world = make_world(segment_bytes=10)
    upload = await world.service.create(ALICE, Creation(length=35, filename="a.txt"))
    data = b"0123456789abcdefghijKLMNOPQRSTuvwxy"
    done = await world.service.append(ALICE, upload.id, stream(data, 3), offset=0)
    assert done.received == 35
    assert done.upload.file_id is not None
    record = world.files.records[done.upload.file_id]
    assert world.blobs.blobs[record.sha256] == data
    assert world.parts.writes == 4
    assert world.parts.held(upload.id) == 0  # removed once the file is made


async def test_a_dropped_connection_keeps_what_arrived() -> None:
    world = make_world(segment_bytes=10)
    upload = await world.service.create(ALICE, Creation(length=30, filename="a.txt"))
    kept = await world.service.append(ALICE, upload.id, cut_after(b"x" * 17), offset=0)
    assert kept.upload.offset == 17
    assert (await world.service.get(ALICE, upload.id)).offset == 17
    done = await world.service.append(ALICE, upload.id, stream(b"y" * 13), offset=17)
    assert done.upload.complete


async def test_with_a_checksum_a_dropped_connection_keeps_nothing() -> None:
    world = make_world(segment_bytes=10)
    upload = await world.service.create(ALICE, Creation(length=30, filename="a.txt"))
    with pytest.raises(ClientDisconnected):
        await world.service.append(
            ALICE, upload.id, cut_after(b"x" * 17), offset=0, checksum=sha1(b"x" * 30)
        )
    assert (await world.service.get(ALICE, upload.id)).offset == 0
    assert world.parts.held(upload.id) == 0
    with pytest.raises(ChecksumMismatch):
        await world.service.append(
            ALICE, upload.id, stream(b"x" * 25), offset=0, checksum=sha1(b"x" * 24)
        )
    assert world.parts.held(upload.id) == 0
    assert (await world.service.get(ALICE, upload.id)).offset == 0


async def test_a_writer_holds_the_upload_until_its_lease_lapses() -> None:
    world = make_world(lock_seconds=30)
    upload = await world.service.create(ALICE, Creation(length=20, filename="a.txt"))
    now = world.clock.now()
    # Another replica's writer, mid-request.
    lock = await world.uploads.lock(
        upload.id, token="other", offset=0, now=now, until=now + timedelta(seconds=30)
    )
    assert lock.value == "acquired"
    with pytest.raises(UploadLocked):
        await world.service.append(ALICE, upload.id, stream(b"a" * 5), offset=0)
    # It died: once its lease lapses, the upload is free again, and it can commit nothing.
    world.clock._now += timedelta(seconds=31)
    kept = await world.service.append(ALICE, upload.id, stream(b"a" * 5), offset=0)
    assert kept.upload.offset == 5
    from filewallball.domain.models import Segment

    lost = [Segment(0, 5, Segment.key_for(0, "other"))]
    assert not await world.uploads.append(upload.id, token="other", segments=lost)
    assert (await world.service.get(ALICE, upload.id)).offset == 5


async def test_an_outage_at_completion_keeps_the_upload_but_not_the_last_bytes() -> None:
    world = make_world(segment_bytes=10)
    upload = await world.service.create(ALICE, Creation(length=25, filename="a.txt"))
    await world.service.append(ALICE, upload.id, stream(b"a" * 20), offset=0)

    async def broken(chunks: AsyncIterator[bytes]) -> object:
        raise DependencyUnavailable("blob storage", "down")

    stage = world.blobs.stage
    world.blobs.stage = broken  # type: ignore[assignment,method-assign]
    with pytest.raises(DependencyUnavailable):
        await world.service.append(ALICE, upload.id, stream(b"b" * 5), offset=20)
    after = await world.service.get(ALICE, upload.id)
    assert (after.offset, after.complete) == (20, False)
    assert world.parts.held(upload.id) == 2  # the committed ones only
    world.blobs.stage = stage  # type: ignore[method-assign]
    done = await world.service.append(ALICE, upload.id, stream(b"b" * 5), offset=20)
    assert (
        world.blobs.blobs[world.files.records[done.upload.file_id].sha256] == b"a" * 20 + b"b" * 5
    )  # type: ignore[index]


async def test_offsets_lengths_and_owners_are_checked() -> None:
    world = make_world()
    upload = await world.service.create(ALICE, Creation(length=10, filename="a.txt"))
    with pytest.raises(OffsetMismatch):
        await world.service.append(ALICE, upload.id, stream(b"a"), offset=1)
    with pytest.raises(LengthExceeded):
        await world.service.append(ALICE, upload.id, stream(b"a" * 11), offset=0)
    with pytest.raises(UploadNotFound):
        await world.service.get(BOB, upload.id)
    with pytest.raises(UploadNotFound):
        await world.service.append(BOB, upload.id, stream(b"a"), offset=0)
    assert (await world.service.get(ALICE, upload.id)).offset == 0
    assert world.parts.held(upload.id) == 0


async def test_quota_room_is_held_from_creation_to_completion() -> None:
    small = principal(Role.UPLOADER, "carol", quota_bytes=100)
    world = make_world()
    with pytest.raises(QuotaExceeded):
        await world.service.create(small, Creation(length=101, filename="a"))
    upload = await world.service.create(small, Creation(length=60, filename="a"))
    assert len(world.usage.reservations) == 1
    with pytest.raises(QuotaExceeded):
        await world.service.create(small, Creation(length=41, filename="b"))
    deferred = await world.service.create(small, Creation(length=None, filename="c"))
    with pytest.raises(QuotaExceeded):
        await world.service.append(small, deferred.id, stream(b"x"), offset=0, length=41)
    await world.service.append(small, upload.id, stream(b"x" * 60), offset=0)
    assert world.usage.reservations == {}  # the file counts now, the room is given back
    await world.service.terminate(small, deferred.id)


async def test_the_purge_forgets_expired_uploads_and_leftover_bytes() -> None:
    world = make_world(expires_in_seconds=3600)
    small = principal(Role.UPLOADER, "dave", quota_bytes=1000)
    upload = await world.service.create(small, Creation(length=20, filename="a"))
    await world.service.append(small, upload.id, stream(b"z" * 5), offset=0)
    world.parts.segments[("f" * 32, "leftover")] = (b"old", 0.0)  # no upload lists it
    assert await world.service.purge(stale_after_seconds=60) == (0, 1)
    world.clock._now += timedelta(hours=1)
    with pytest.raises(UploadExpired):
        await world.service.get(small, upload.id)
    assert await world.service.purge(stale_after_seconds=60) == (1, 0)
    assert world.parts.held(upload.id) == 0
    assert world.usage.reservations == {}
    with pytest.raises(UploadNotFound):
        await world.service.get(small, upload.id)
    actions = [entry.action for entry in world.audit.entries]
    assert actions.count("upload.expire") == 1


async def test_a_completion_whose_answer_was_lost_makes_one_file() -> None:
    """The file committed, then marking the upload complete failed: the client sends its last
    bytes again, and finds the same file, not a second one."""
    world = make_world(segment_bytes=10)
    upload = await world.service.create(ALICE, Creation(length=15, filename="a.txt"))
    await world.service.append(ALICE, upload.id, stream(b"a" * 10), offset=0)
    complete = world.uploads.complete

    async def lost(*args: object, **kwargs: object) -> bool:
        raise DependencyUnavailable("database", "the answer was lost")

    world.uploads.complete = lost  # type: ignore[method-assign]
    with pytest.raises(DependencyUnavailable):
        await world.service.append(ALICE, upload.id, stream(b"b" * 5), offset=10)
    assert len(world.files.records) == 1
    world.uploads.complete = complete  # type: ignore[method-assign]
    done = await world.service.append(ALICE, upload.id, stream(b"b" * 5), offset=10)
    assert len(world.files.records) == 1
    assert done.upload.file_id in world.files.records


async def test_an_upload_has_a_bounded_number_of_segments(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from filewallball.domain import resumable
    from filewallball.domain.errors import InvalidRequest

    monkeypatch.setattr(resumable, "MAX_SEGMENTS", 3)
    world = make_world(segment_bytes=10)
    upload = await world.service.create(ALICE, Creation(length=100, filename="a.txt"))
    await world.service.append(ALICE, upload.id, stream(b"a" * 25), offset=0)  # 3 segments
    with pytest.raises(InvalidRequest) as refused:
        await world.service.append(ALICE, upload.id, stream(b"b"), offset=25)
    assert refused.value.code == "too_many_segments"
    assert (await world.service.get(ALICE, upload.id)).offset == 25


async def test_a_retried_concatenation_finds_the_file_made() -> None:
    world = make_world()
    parts = []
    for piece in (b"left-", b"right"):
        made = await world.service.create(
            ALICE, Creation(length=len(piece), filename="p", partial=True)
        )
        await world.service.append(ALICE, made.id, stream(piece), offset=0)
        parts.append(made.id)
    add = world.uploads.add

    async def lost(upload: object) -> None:
        raise DependencyUnavailable("database", "down")

    world.uploads.add = lost  # type: ignore[method-assign,assignment]
    with pytest.raises(DependencyUnavailable):
        await world.service.concatenate(ALICE, Creation(length=None, filename="j"), parts)
    world.uploads.add = add  # type: ignore[method-assign]
    final = await world.service.concatenate(ALICE, Creation(length=None, filename="j"), parts)
    assert len(world.files.records) == 1
    record = world.files.records[final.file_id]  # type: ignore[index]
    assert world.blobs.blobs[record.sha256] == b"left-right"


async def test_a_deferred_upload_is_bounded_by_the_quota_left() -> None:
    small = principal(Role.UPLOADER, "erin", quota_bytes=100)
    world = make_world(segment_bytes=10)
    upload = await world.service.create(small, Creation(length=None, filename="a"))
    assert world.usage.reservations == {}  # nothing held for an unknown length
    await world.service.append(small, upload.id, stream(b"x" * 60), offset=0)
    with pytest.raises(QuotaExceeded):
        await world.service.append(small, upload.id, stream(b"y" * 41), offset=60)
    # What fitted was kept, segment by segment; never more than the room left.
    kept = (await world.service.get(small, upload.id)).offset
    assert 60 <= kept <= 100
    with pytest.raises(QuotaExceeded):
        await world.service.append(small, upload.id, stream(b"z"), offset=kept, length=101)
    done = await world.service.append(small, upload.id, stream(b""), offset=kept, length=kept)
    assert done.upload.complete
