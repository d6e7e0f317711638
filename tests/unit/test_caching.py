"""Records and keys through a cache: equal values back, and a change always wins over a copy."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime

from filewallball.adapters.caching import CachedFileRepository, CachedKeyRepository
from filewallball.domain.models import (
    ByteSize,
    ContentType,
    FileId,
    Filename,
    FileRecord,
    Sha256,
    ThumbnailStatus,
    Visibility,
)
from filewallball.domain.security import ApiKey, Role
from tests.fakes import FakeCache, FakeFileRepository, FakeKeyRepository

NOW = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
RECORD = FileRecord(
    id=FileId.new(),
    filename=Filename.sanitise("naïve.txt"),
    size=ByteSize(3),
    content_type=ContentType("text/plain"),
    sha256=Sha256("a" * 64),
    created_at=NOW,
    visibility=Visibility.PUBLIC,
    owner="k1",
    thumbnail_status=ThumbnailStatus.PENDING,
    expires_at=NOW.replace(year=2027),
)
KEY = ApiKey(
    id="abcdef012345",
    name="ann",
    role=Role.UPLOADER,
    owner="ann",
    secret_hash="h" * 64,
    created_at=NOW,
    expires_at=NOW.replace(year=2030),
    allowed_cidrs=("10.0.0.0/8",),
    quota_bytes=5,
)


async def _stored(record: FileRecord) -> tuple[FakeFileRepository, CachedFileRepository]:
    database = FakeFileRepository()
    async with database.unit_of_work() as work:
        await work.add(record)
        await work.commit()
    return database, CachedFileRepository(database, cache=FakeCache())


async def test_a_cached_record_comes_back_equal_without_the_database() -> None:
    database, files = await _stored(RECORD)
    assert await files.get(RECORD.id) == RECORD  # a miss fills the cache
    database.records.clear()
    assert await files.get(RECORD.id) == RECORD


async def test_every_change_of_a_record_invalidates_its_copy() -> None:
    _database, files = await _stored(RECORD)
    await files.get(RECORD.id)
    await files.set_thumbnail_status(RECORD.id, ThumbnailStatus.READY)
    assert (await files.get(RECORD.id)) == replace(RECORD, thumbnail_status=ThumbnailStatus.READY)
    trashed = await files.trash(RECORD.id, at=NOW)
    assert trashed is not None
    assert (await files.get(RECORD.id)) == trashed
    await files.restore(RECORD.id)
    assert (await files.get(RECORD.id)) == replace(trashed, deleted_at=None)
    await files.remove(RECORD.id)
    assert await files.get(RECORD.id) is None


async def test_a_read_that_began_before_a_change_cannot_fill_the_old_value() -> None:
    """The lookup misses, the database answers the old record, the delete lands, then the fill."""
    database, _ = await _stored(RECORD)
    cache = FakeCache()
    files = CachedFileRepository(database, cache=cache)
    found = await cache.lookup(RECORD.id)
    assert found.value is None and found.fence is not None
    await files.remove(RECORD.id)  # the change, between the reader's lookup and its fill
    await cache.fill(RECORD.id, b"stale", fence=found.fence)
    assert await files.get(RECORD.id) is None


async def test_a_cache_that_lost_its_state_refuses_fills_fenced_before() -> None:
    _database, _ = await _stored(RECORD)
    cache = FakeCache()
    found = await cache.lookup(RECORD.id)
    assert found.fence is not None
    cache.lose_everything()  # a Redis restart, a lapsed lease
    await cache.fill(RECORD.id, b"stale", fence=found.fence)
    assert (await cache.lookup(RECORD.id)).value is None


async def test_a_cached_key_comes_back_equal_and_a_revocation_wins() -> None:
    database = FakeKeyRepository()
    await database.add(KEY)
    keys = CachedKeyRepository(database, cache=FakeCache())
    assert await keys.get(KEY.id) == KEY
    assert await keys.get(KEY.id) == KEY  # from the cache
    revoked = await keys.revoke(KEY.id, at=NOW)
    assert revoked is not None and revoked.revoked_at == NOW
    assert await keys.get(KEY.id) == revoked


async def test_concurrent_readers_and_a_revocation_end_with_the_revoked_key() -> None:
    database = FakeKeyRepository()
    await database.add(KEY)
    keys = CachedKeyRepository(database, cache=FakeCache())
    await asyncio.gather(*(keys.get(KEY.id) for _ in range(10)), keys.revoke(KEY.id, at=NOW))
    after = await keys.get(KEY.id)
    assert after is not None and after.revoked_at == NOW
