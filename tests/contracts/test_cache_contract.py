"""The Cache contract, run against the fake and real Redis; then what Redis adds: sharing, outages."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from structlog.testing import capture_logs

from filewallball.adapters.redis.cache import RedisCache
from filewallball.adapters.redis.client import create_redis
from filewallball.domain.errors import DependencyUnavailable
from filewallball.domain.ports import Cache
from tests.fakes import FakeCache

CLOSED_PORT_URL = "redis://127.0.0.1:1/0"


@pytest.fixture(params=["fake", "redis"])
async def cache(request: pytest.FixtureRequest) -> AsyncIterator[Cache]:
    if request.param == "fake":
        yield FakeCache(ttl_seconds=1)
        return
    # Looked up only here, so the fake's run does not skip when Redis is down.
    url: str = request.getfixturevalue("redis_server")
    prefix: str = request.getfixturevalue("redis_prefix")
    client = create_redis(url)
    try:
        yield RedisCache(client, prefix=prefix, name="records", ttl_seconds=1)
    finally:
        await client.aclose()


async def _filled(cache: Cache, key: str, value: bytes) -> None:
    found = await cache.lookup(key)
    assert found.value is None and found.fence is not None
    await cache.fill(key, value, fence=found.fence)


async def test_a_miss_gives_a_fence_and_a_fill_is_then_a_hit(cache: Cache) -> None:
    await _filled(cache, "k", b"\x00\xff binary")
    assert (await cache.lookup("k")).value == b"\x00\xff binary"
    assert (await cache.lookup("k")).fence is None  # a hit needs no fill


async def test_a_fill_never_overwrites(cache: Cache) -> None:
    first, second = await cache.lookup("k"), await cache.lookup("k")
    assert first.fence is not None and second.fence is not None
    await cache.fill("k", b"first", fence=first.fence)
    await cache.fill("k", b"second", fence=second.fence)
    assert (await cache.lookup("k")).value == b"first"


async def test_an_invalidation_wins_over_a_fill_fenced_before_it(cache: Cache) -> None:
    await _filled(cache, "k", b"old")
    racing = await cache.lookup("other")  # a reader that missed, then read the database...
    assert racing.fence is not None
    await cache.invalidate("k")
    await cache.invalidate("other")  # ...while the value changed
    await cache.fill("other", b"old", fence=racing.fence)
    for key in ("k", "other"):
        found = await cache.lookup(key)
        # A tombstone: not a value, and no fill may replace it while it lasts.
        assert (found.value, found.fence) == (None, None)
    await cache.invalidate("never-cached")


async def test_entries_and_tombstones_expire(cache: Cache) -> None:
    await _filled(cache, "k", b"v")
    await cache.invalidate("gone")
    await asyncio.sleep(1.1)
    assert (await cache.lookup("k")).value is None
    assert (await cache.lookup("gone")).fence is not None  # fillable again


async def test_ping(cache: Cache) -> None:
    await cache.ping()


async def test_stats_count_lookups_and_live_entries(cache: Cache) -> None:
    empty = await cache.stats()
    assert (empty.hits, empty.misses, empty.entries, empty.ratio, empty.since) == (
        0,
        0,
        0,
        None,
        None,
    )
    await _filled(cache, "a", b"v")  # one miss
    await _filled(cache, "b", b"v")  # one miss
    await cache.invalidate("c")  # a tombstone is not an entry
    assert (await cache.lookup("a")).value == b"v"
    assert (await cache.lookup("a")).value == b"v"
    assert (await cache.lookup("b")).value == b"v"
    assert (await cache.lookup("c")).value is None  # a tombstone's lookup is a miss
    stats = await cache.stats()
    assert (stats.hits, stats.misses, stats.entries) == (3, 3, 2)
    assert stats.ratio == 0.5
    assert stats.since is not None
    await asyncio.sleep(1.1)
    assert (await cache.stats()).entries == 0


# Redis only.


async def test_prefixes_and_names_keep_caches_apart(redis_server: str, redis_prefix: str) -> None:
    client = create_redis(redis_server)
    try:
        mine = RedisCache(client, prefix=redis_prefix + "a:", name="records", ttl_seconds=60)
        theirs = RedisCache(client, prefix=redis_prefix + "b:", name="records", ttl_seconds=60)
        keys = RedisCache(client, prefix=redis_prefix + "a:", name="keys", ttl_seconds=60)
        await _filled(mine, "k", b"mine")
        assert (await theirs.lookup("k")).value is None
        assert (await keys.lookup("k")).value is None
        assert (await mine.lookup("k")).value == b"mine"
    finally:
        await client.aclose()


async def test_stats_are_shared_by_every_client_of_a_prefix(
    redis_server: str, redis_prefix: str
) -> None:
    """Two replicas (two connections) count into one place; another prefix is apart."""
    first, second = create_redis(redis_server), create_redis(redis_server)
    try:
        replica_a = RedisCache(first, prefix=redis_prefix + "c:", name="records", ttl_seconds=60)
        replica_b = RedisCache(second, prefix=redis_prefix + "c:", name="records", ttl_seconds=60)
        elsewhere = RedisCache(first, prefix=redis_prefix + "d:", name="records", ttl_seconds=60)
        await _filled(replica_a, "k", b"v")
        assert (await replica_b.lookup("k")).value == b"v"
        assert (await replica_a.lookup("k")).value == b"v"
        assert (await replica_b.lookup("gone")).value is None
        await _filled(elsewhere, "x", b"v")
        await asyncio.sleep(0.3)  # each process adds its counts within a tenth of a second
        for replica in (replica_a, replica_b):
            stats = await replica.stats()
            assert (stats.hits, stats.misses, stats.entries, stats.shared) == (2, 2, 1, True)
        assert (await elsewhere.stats()).entries == 1
    finally:
        await first.aclose()
        await second.aclose()


async def test_a_prefix_with_glob_characters_counts_only_its_own_entries(
    redis_server: str, redis_prefix: str
) -> None:
    client = create_redis(redis_server)
    try:
        starred = RedisCache(client, prefix=redis_prefix + "[*]:", name="records", ttl_seconds=60)
        plain = RedisCache(client, prefix=redis_prefix + "x:", name="records", ttl_seconds=60)
        await _filled(starred, "k", b"v")
        await _filled(plain, "k", b"v")
        await _filled(plain, "j", b"v")
        assert (await starred.stats()).entries == 1
    finally:
        await client.aclose()


async def test_an_outage_is_a_quick_miss_and_an_invalidation_waits_out_the_lease() -> None:
    client = create_redis(CLOSED_PORT_URL)
    cache = RedisCache(client, prefix="fwbtest:", name="records", ttl_seconds=60)
    try:
        started = time.monotonic()
        with capture_logs() as logs:
            for _ in range(5):
                found = await cache.lookup("k")
                assert (found.value, found.fence) == (None, None)  # read the database, keep it
                await cache.fill("k", b"v", fence="whatever")
        assert time.monotonic() - started < 2
        assert cache.bypassed == 10
        # The first failure is logged; the breaker then skips Redis quietly.
        assert [entry["event"] for entry in logs] == ["cache_unavailable"]
        # An invalidation is never skipped: it retries, then waits until the lease has lapsed.
        started = time.monotonic()
        with capture_logs() as logs:
            await cache.invalidate("k")
        waited = time.monotonic() - started
        assert 2.0 <= waited < 4.0
        events = [entry["event"] for entry in logs]
        assert events[0] == "cache_invalidation_delayed"
        assert events[-1] == "cache_invalidation_by_lapse"
        with pytest.raises(DependencyUnavailable):
            await cache.ping()
        with pytest.raises(DependencyUnavailable):
            await cache.stats()
    finally:
        await client.aclose()


async def _fail_a_fill(cache: RedisCache) -> None:
    """A real failure with a healthy server: Redis rejects a fill with a zero expiry."""
    cache._ttl = 0
    found = await cache.lookup("other")
    assert found.fence is not None
    await cache.fill("other", b"v", fence=found.fence)
    cache._ttl = 60


async def test_the_breaker_closes_after_its_cooldown(redis_server: str, redis_prefix: str) -> None:
    client = create_redis(redis_server)
    cache = RedisCache(
        client, prefix=redis_prefix, name="records", ttl_seconds=60, cooldown_seconds=0.1
    )
    try:
        await _filled(cache, "k", b"v")
        await _fail_a_fill(cache)
        assert (await cache.lookup("k")).value is None  # skipped during the cooldown
        assert cache.bypassed == 2
        await asyncio.sleep(0.15)
        assert (await cache.lookup("k")).value == b"v"
        assert cache.bypassed == 2
    finally:
        await client.aclose()


async def test_a_successful_ping_closes_the_breaker(redis_server: str, redis_prefix: str) -> None:
    client = create_redis(redis_server)
    cache = RedisCache(
        client, prefix=redis_prefix, name="records", ttl_seconds=60, cooldown_seconds=60
    )
    try:
        await _filled(cache, "k", b"v")
        await _fail_a_fill(cache)
        assert (await cache.lookup("k")).value is None
        await cache.ping()
        assert (await cache.lookup("k")).value == b"v"
    finally:
        await client.aclose()
