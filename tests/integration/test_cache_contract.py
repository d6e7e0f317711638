"""The Cache contract, run against the in-process cache and real Redis; then Redis outages."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from structlog.testing import capture_logs

from filewallball.adapters.memory import MemoryCache
from filewallball.adapters.redis_cache import RedisCache, create_redis
from filewallball.domain.errors import DependencyUnavailable
from filewallball.domain.ports import Cache

CLOSED_PORT_URL = "redis://127.0.0.1:1/0"


@pytest.fixture(params=["memory", "redis"])
async def cache(request: pytest.FixtureRequest) -> AsyncIterator[Cache]:
    if request.param == "memory":
        yield MemoryCache()
        return
    # Looked up only here, so the memory run does not skip when Redis is down.
    url: str = request.getfixturevalue("redis_server")
    prefix: str = request.getfixturevalue("redis_prefix")
    client = create_redis(url)
    try:
        yield RedisCache(client, prefix=prefix)
    finally:
        await client.aclose()


async def test_get_set_delete(cache: Cache) -> None:
    assert await cache.get("k") is None
    await cache.set("k", b"one", ttl_seconds=60)
    assert await cache.get("k") == b"one"
    await cache.set("k", b"\x00\xff binary", ttl_seconds=60)
    assert await cache.get("k") == b"\x00\xff binary"
    await cache.delete("k")
    assert await cache.get("k") is None
    await cache.delete("never-set")


async def test_add_does_not_overwrite(cache: Cache) -> None:
    assert await cache.add("k", b"first", ttl_seconds=60)
    assert not await cache.add("k", b"second", ttl_seconds=60)
    assert await cache.get("k") == b"first"
    await cache.delete("k")
    assert await cache.add("k", b"third", ttl_seconds=60)
    assert await cache.get("k") == b"third"


async def test_entries_expire(cache: Cache) -> None:
    await cache.set("set", b"v", ttl_seconds=1)
    assert await cache.add("added", b"v", ttl_seconds=1)
    await cache.set("kept", b"v", ttl_seconds=60)
    await asyncio.sleep(1.1)
    assert await cache.get("set") is None
    assert await cache.get("added") is None
    assert await cache.get("kept") == b"v"
    assert await cache.add("added", b"again", ttl_seconds=60)


async def test_ping(cache: Cache) -> None:
    await cache.ping()


async def test_stats_count_hits_misses_and_live_entries(cache: Cache) -> None:
    empty = await cache.stats()
    assert (empty.hits, empty.misses, empty.entries, empty.ratio, empty.since) == (
        0,
        0,
        0,
        None,
        None,
    )
    await cache.set("a", b"v", ttl_seconds=60)
    await cache.set("short", b"v", ttl_seconds=1)
    assert await cache.add("b", b"v", ttl_seconds=60)  # add and set are not lookups
    assert await cache.get("a") == b"v"
    assert await cache.get("a") == b"v"
    assert await cache.get("b") == b"v"
    assert await cache.get("absent") is None
    stats = await cache.stats()
    assert (stats.hits, stats.misses, stats.entries) == (3, 1, 3)
    assert stats.ratio == 0.75
    assert stats.since is not None
    await asyncio.sleep(1.1)
    await cache.delete("b")
    assert (await cache.stats()).entries == 1


# Redis only.


async def test_prefixes_keep_caches_apart(redis_server: str, redis_prefix: str) -> None:
    client = create_redis(redis_server)
    try:
        mine = RedisCache(client, prefix=redis_prefix + "a:")
        theirs = RedisCache(client, prefix=redis_prefix + "b:")
        await mine.set("k", b"mine", ttl_seconds=60)
        assert await theirs.get("k") is None
        assert await client.get(redis_prefix + "a:k") == b"mine"
    finally:
        await client.aclose()


async def test_stats_are_shared_by_every_client_of_a_prefix(
    redis_server: str, redis_prefix: str
) -> None:
    """Two replicas (two connections) count into one place; another prefix is apart."""
    first, second = create_redis(redis_server), create_redis(redis_server)
    try:
        replica_a = RedisCache(first, prefix=redis_prefix + "c:")
        replica_b = RedisCache(second, prefix=redis_prefix + "c:")
        elsewhere = RedisCache(first, prefix=redis_prefix + "d:")
        await replica_a.set("k", b"v", ttl_seconds=60)
        assert await replica_b.get("k") == b"v"
        assert await replica_a.get("k") == b"v"
        assert await replica_b.get("gone") is None
        await elsewhere.set("x", b"v", ttl_seconds=60)
        for replica in (replica_a, replica_b):
            stats = await replica.stats()
            assert (stats.hits, stats.misses, stats.entries, stats.shared) == (2, 1, 1, True)
        assert (await elsewhere.stats()).entries == 1
    finally:
        await first.aclose()
        await second.aclose()


async def test_a_prefix_with_glob_characters_counts_only_its_own_entries(
    redis_server: str, redis_prefix: str
) -> None:
    client = create_redis(redis_server)
    try:
        starred = RedisCache(client, prefix=redis_prefix + "[*]:")
        plain = RedisCache(client, prefix=redis_prefix + "x:")
        await starred.set("k", b"v", ttl_seconds=60)
        await plain.set("k", b"v", ttl_seconds=60)
        await plain.set("j", b"v", ttl_seconds=60)
        assert (await starred.stats()).entries == 1
    finally:
        await client.aclose()


async def test_an_outage_is_a_quick_miss_not_an_error() -> None:
    client = create_redis(CLOSED_PORT_URL)
    cache = RedisCache(client, prefix="fwbtest:")
    try:
        started = time.monotonic()
        with capture_logs() as logs:
            for _ in range(5):
                assert await cache.get("k") is None
                assert not await cache.add("k", b"v", ttl_seconds=60)
                await cache.set("k", b"v", ttl_seconds=60)
                await cache.delete("k")
        assert time.monotonic() - started < 2
        assert cache.bypassed == 20
        # The first failure is logged; the breaker then skips Redis quietly.
        assert [entry["event"] for entry in logs] == ["cache_unavailable"]
        assert "error" in logs[0]
        with pytest.raises(DependencyUnavailable):
            await cache.ping()
        with pytest.raises(DependencyUnavailable):
            await cache.stats()
    finally:
        await client.aclose()


async def test_the_breaker_closes_after_its_cooldown(redis_server: str, redis_prefix: str) -> None:
    client = create_redis(redis_server)
    cache = RedisCache(client, prefix=redis_prefix, cooldown_seconds=0.1)
    try:
        await cache.set("k", b"v", ttl_seconds=60)
        # Redis rejects a zero expiry: a real failure, with a healthy server.
        await cache.set("other", b"v", ttl_seconds=0)
        assert await cache.get("k") is None  # skipped during the cooldown
        assert cache.bypassed == 2
        await asyncio.sleep(0.15)
        assert await cache.get("k") == b"v"
        assert cache.bypassed == 2
    finally:
        await client.aclose()


async def test_a_successful_ping_closes_the_breaker(redis_server: str, redis_prefix: str) -> None:
    client = create_redis(redis_server)
    cache = RedisCache(client, prefix=redis_prefix, cooldown_seconds=60)
    try:
        await cache.set("k", b"v", ttl_seconds=60)
        await cache.set("other", b"v", ttl_seconds=0)
        assert await cache.get("k") is None
        await cache.ping()
        assert await cache.get("k") == b"v"
    finally:
        await client.aclose()
