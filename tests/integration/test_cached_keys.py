"""Keys read through Redis: a revocation is seen at once by every replica, races included."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from filewallball.adapters.caching import CachedKeyRepository
from filewallball.adapters.redis.cache import RedisCache
from filewallball.adapters.redis.client import create_redis
from filewallball.domain.security import ApiKey, Role
from tests.fakes import FakeKeyRepository

NOW = datetime(2026, 1, 1, tzinfo=UTC)
KEY = ApiKey(
    id="abcdef012345",
    name="ann",
    role=Role.UPLOADER,
    owner="ann",
    secret_hash="h" * 64,
    created_at=NOW,
    allowed_cidrs=("10.0.0.0/8",),
    quota_bytes=5,
)


class SlowKeyRepository(FakeKeyRepository):
    """A database whose reads can be held back, to replay a read racing a revoke."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.read_started = asyncio.Event()
        self.hold = False

    async def get(self, key_id: str) -> ApiKey | None:
        key = await super().get(key_id)
        if self.hold:
            self.read_started.set()
            await self.release.wait()
        return key


@pytest.fixture
async def caches(redis_server: str, redis_prefix: str) -> AsyncIterator[tuple[RedisCache, ...]]:
    """Two replicas' caches: two connections, one prefix."""
    first, second = create_redis(redis_server), create_redis(redis_server)
    try:
        yield (
            RedisCache(first, prefix=redis_prefix, name="keys", ttl_seconds=60),
            RedisCache(second, prefix=redis_prefix, name="keys", ttl_seconds=60),
        )
    finally:
        await first.aclose()
        await second.aclose()


async def test_a_cached_key_comes_back_equal_without_the_database(
    caches: tuple[RedisCache, ...],
) -> None:
    database = FakeKeyRepository()
    await database.add(KEY)
    keys = CachedKeyRepository(database, cache=caches[0])
    assert await keys.get(KEY.id) == KEY
    database.keys.clear()  # the database is no longer asked
    assert await keys.get(KEY.id) == KEY
    assert await keys.get("unknown00000") is None


async def test_a_revocation_on_one_replica_is_seen_at_once_by_the_other(
    caches: tuple[RedisCache, ...],
) -> None:
    database = FakeKeyRepository()
    await database.add(KEY)
    replica_a = CachedKeyRepository(database, cache=caches[0])
    replica_b = CachedKeyRepository(database, cache=caches[1])
    assert (await replica_b.get(KEY.id)) == KEY  # cached, active
    await replica_a.revoke(KEY.id, at=NOW)
    seen = await replica_b.get(KEY.id)
    assert seen is not None
    assert seen.revoked_at == NOW


async def test_a_read_that_raced_a_revoke_does_not_cache_the_active_key(
    caches: tuple[RedisCache, ...],
) -> None:
    database = SlowKeyRepository()
    await database.add(KEY)
    reader = CachedKeyRepository(database, cache=caches[0])
    revoker = CachedKeyRepository(database, cache=caches[1])
    database.hold = True
    read = asyncio.create_task(reader.get(KEY.id))  # reads the active key, then stalls
    await database.read_started.wait()
    database.hold = False
    await revoker.revoke(KEY.id, at=NOW)
    database.release.set()
    assert (await read) == KEY  # that request began before the revocation
    after = await reader.get(KEY.id)
    assert after is not None
    assert after.revoked_at == NOW


async def test_an_unreadable_cache_entry_falls_back_to_the_database(
    caches: tuple[RedisCache, ...],
) -> None:
    database = FakeKeyRepository()
    await database.add(KEY)
    found = await caches[0].lookup(KEY.id)
    assert found.fence is not None
    await caches[0].fill(KEY.id, b"{not json", fence=found.fence)
    assert await CachedKeyRepository(database, cache=caches[0]).get(KEY.id) == KEY
