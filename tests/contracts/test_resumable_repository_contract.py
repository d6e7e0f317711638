"""The ResumableRepository contract (uploads, segments, write leases) on the fake, SQLite and
PostgreSQL: the fake the unit tests use must behave as the databases do."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from filewallball.adapters.sql import create_engine
from filewallball.adapters.sql.resumable import SqlResumableRepository
from filewallball.domain.models import FileId, ResumableUpload, Segment, UploadId, Visibility
from filewallball.domain.policies import Reservation
from filewallball.domain.ports import Lock, ResumableRepository
from tests.contracts.test_security_repositories_contract import migrated_url
from tests.fakes import FakeResumableRepository

T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
LEASE = timedelta(seconds=10)


def upload(
    owner: str | None = "alice", *, length: int | None = 100, **changes: object
) -> ResumableUpload:
    made = ResumableUpload(
        id=UploadId.new(),
        owner=owner,
        length=length,
        offset=0,
        filename="a.bin",
        visibility=Visibility.PUBLIC,
        expires_in_seconds=3600,
        metadata="filename YS5iaW4=",
        created_at=T0,
        expires_at=T0 + timedelta(days=1),
        reservation_id="r1",
        reservation_bytes=length,
    )
    return replace(made, **changes)  # type: ignore[arg-type]


def seg(start: int, size: int, writer: str = "w") -> Segment:
    return Segment(start, size, Segment.key_for(start, writer))


@pytest.fixture(params=["fake", "sqlite", "postgresql"])
async def repo(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[ResumableRepository]:
    if request.param == "fake":
        yield FakeResumableRepository()
        return
    url = await asyncio.to_thread(migrated_url, request, tmp_path, request.param)
    engine = create_engine(url)
    try:
        yield SqlResumableRepository(engine)
    finally:
        await engine.dispose()


async def test_an_upload_reads_back_as_added(repo: ResumableRepository) -> None:
    made = upload()
    await repo.add(made)
    assert await repo.get(made.id) == made
    assert await repo.get(UploadId.new()) is None
    assert await repo.segments(made.id) == []


async def test_one_lease_at_a_time_at_the_upload_offset(repo: ResumableRepository) -> None:
    made = upload()
    await repo.add(made)
    assert await repo.lock(made.id, token="a", offset=5, now=T0, until=T0 + LEASE) is Lock.MOVED
    assert await repo.lock(made.id, token="a", offset=0, now=T0, until=T0 + LEASE) is Lock.ACQUIRED
    assert await repo.lock(made.id, token="b", offset=0, now=T0, until=T0 + LEASE) is Lock.HELD
    held = await repo.get(made.id)
    assert held is not None and held.locked_until == T0 + LEASE
    # Lapsed: another writer takes it, and the first can commit nothing any more.
    later = T0 + LEASE + timedelta(seconds=1)
    assert (
        await repo.lock(made.id, token="b", offset=0, now=later, until=later + LEASE)
        is Lock.ACQUIRED
    )
    assert not await repo.append(made.id, token="a", segments=[seg(0, 10, "a")])
    assert not await repo.renew(made.id, token="a", until=later + LEASE)
    assert await repo.renew(made.id, token="b", until=later + 2 * LEASE)
    await repo.unlock(made.id, token="a")  # not the holder: nothing changes
    assert (
        await repo.lock(made.id, token="c", offset=0, now=later, until=later + LEASE) is Lock.HELD
    )
    await repo.unlock(made.id, token="b")
    free = await repo.get(made.id)
    assert free is not None and free.locked_until is None
    assert (
        await repo.lock(UploadId.new(), token="x", offset=0, now=T0, until=T0 + LEASE) is Lock.GONE
    )


async def test_segments_continue_from_the_offset(repo: ResumableRepository) -> None:
    made = upload()
    await repo.add(made)
    assert await repo.lock(made.id, token="a", offset=0, now=T0, until=T0 + LEASE) is Lock.ACQUIRED
    assert await repo.append(made.id, token="a", segments=[seg(0, 10), seg(10, 20)])
    assert not await repo.append(made.id, token="a", segments=[seg(0, 10, "x")])  # not at 30
    assert await repo.append(made.id, token="a", segments=[seg(30, 5)])
    assert await repo.segments(made.id) == [seg(0, 10), seg(10, 20), seg(30, 5)]
    now = await repo.get(made.id)
    assert now is not None and now.offset == 35
    # The offset moved: a new writer must start at 35.
    await repo.unlock(made.id, token="a")
    assert await repo.lock(made.id, token="b", offset=0, now=T0, until=T0 + LEASE) is Lock.MOVED


async def test_completion_records_the_file_and_forgets_segments(repo: ResumableRepository) -> None:
    made = upload(length=30)
    await repo.add(made)
    await repo.lock(made.id, token="a", offset=0, now=T0, until=T0 + LEASE)
    await repo.append(made.id, token="a", segments=[seg(0, 10)])
    file_id = FileId.new()
    assert await repo.complete(made.id, token="a", segments=[seg(10, 20)], file_id=file_id)
    done = await repo.get(made.id)
    assert done is not None
    assert (done.offset, done.file_id, done.complete, done.reservation_id) == (
        30,
        file_id,
        True,
        None,
    )
    assert done.locked_until is None
    assert await repo.segments(made.id) == []
    assert await repo.lock(made.id, token="b", offset=30, now=T0, until=T0 + LEASE) is Lock.GONE
    assert not await repo.complete(made.id, token="a", segments=[], file_id=FileId.new())


async def test_a_deferred_length_is_declared_once(repo: ResumableRepository) -> None:
    made = upload(length=None, reservation_id=None, reservation_bytes=None)
    await repo.add(made)
    await repo.lock(made.id, token="a", offset=0, now=T0, until=T0 + LEASE)
    assert not await repo.declare_length(made.id, token="b", length=5, reservation=None)
    room = Reservation(id="r9", owner="alice", bytes=50)
    assert await repo.declare_length(made.id, token="a", length=50, reservation=room)
    declared = await repo.get(made.id)
    assert declared is not None
    assert (declared.length, declared.reservation_id, declared.reservation_bytes) == (50, "r9", 50)
    assert not await repo.declare_length(made.id, token="a", length=60, reservation=None)


async def test_open_counts_expiry_and_removal(repo: ResumableRepository) -> None:
    old = upload(expires_at=T0 + timedelta(hours=1))
    fresh = upload(expires_at=T0 + timedelta(hours=3))
    theirs = upload("bob")
    anonymous = upload(None)
    for made in (old, fresh, theirs, anonymous):
        await repo.add(made)
    assert await repo.count_open("alice", now=T0) == 2
    assert await repo.count_open(None, now=T0) == 1
    # Past its deadline an upload is not open, purged or not.
    assert await repo.count_open("alice", now=T0 + timedelta(hours=2)) == 1
    await repo.lock(fresh.id, token="a", offset=0, now=T0, until=T0 + LEASE)
    await repo.complete(fresh.id, token="a", segments=[seg(0, 100)], file_id=FileId.new())
    assert await repo.count_open("alice", now=T0) == 1  # a complete upload is not open
    due = await repo.expired(now=T0 + timedelta(hours=2), limit=10)
    assert [u.id for u in due] == [old.id]
    assert await repo.expired(now=T0 + timedelta(days=2), limit=2) != []
    removed = await repo.remove(old.id)
    assert removed is not None and removed.id == old.id
    assert await repo.remove(old.id) is None
    assert await repo.get(old.id) is None
