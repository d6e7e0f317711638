"""Copies of Redis entries in each process: served without Redis, never stale after a sync."""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import pytest
import redis.asyncio
from prometheus_client import REGISTRY

from filewallball.adapters.near_cache import NearCache
from filewallball.adapters.redis_cache import RedisCache, create_redis

T = TypeVar("T")
SYNCS = "filewallball_near_cache_syncs_total"
CLOSED_PORT_URL = "redis://127.0.0.1:1/0"


class Replica:
    """One process: its own connection, near cache and record cache, on the shared Redis."""

    def __init__(self, client: redis.asyncio.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self.near = NearCache(client, prefix=prefix)
        self.cache = RedisCache(client, prefix=f"{prefix}cache:", near=self.near)

    async def request(self, work: Callable[[], Awaitable[T]]) -> T:
        """`work` as a request does it: in a context of its own, after a sync."""

        async def run() -> T:
            assert await self.near.sync()
            return await work()

        return await asyncio.create_task(run(), context=contextvars.Context())


@pytest.fixture
async def replicas(redis_server: str, redis_prefix: str) -> AsyncIterator[tuple[Replica, Replica]]:
    first, second = create_redis(redis_server), create_redis(redis_server)
    try:
        yield Replica(first, redis_prefix), Replica(second, redis_prefix)
    finally:
        await first.aclose()
        await second.aclose()


async def _behind_the_logs_back(replica: Replica, key: str, value: bytes) -> None:
    """Change the Redis entry without logging it: only a copy can still give the old value."""
    await replica.client.set(f"{replica.prefix}cache:{key}", value)


async def test_a_synced_request_reads_its_copy_without_redis(
    replicas: tuple[Replica, Replica],
) -> None:
    first, _ = replicas
    await first.cache.set("k", b"one", ttl_seconds=60)
    assert await first.request(lambda: first.cache.get("k")) == b"one"
    await _behind_the_logs_back(first, "k", b"changed")
    # The copy answers: no round trip was made for it.
    assert await first.request(lambda: first.cache.get("k")) == b"one"
    # Outside a synced request (a worker, the CLI) Redis answers.
    assert await first.cache.get("k") == b"changed"


async def test_a_write_on_one_replica_is_seen_by_the_next_request_on_the_other(
    replicas: tuple[Replica, Replica],
) -> None:
    first, second = replicas
    await first.cache.set("k", b"one", ttl_seconds=60)
    assert await second.request(lambda: second.cache.get("k")) == b"one"
    await first.cache.set("k", b"-", ttl_seconds=60)  # a tombstone, as a delete writes
    assert await second.request(lambda: second.cache.get("k")) == b"-"
    assert await second.request(lambda: second.cache.get("k")) == b"-"
    await first.cache.delete("k")
    assert await second.request(lambda: second.cache.get("k")) is None
    # Only the changed entry is dropped: another copy is still served without Redis.
    await first.cache.set("other", b"x", ttl_seconds=60)
    await first.cache.set("kept", b"v", ttl_seconds=60)
    assert await second.request(lambda: second.cache.get("kept")) == b"v"
    await _behind_the_logs_back(second, "kept", b"changed")
    await first.cache.set("other", b"y", ttl_seconds=60)
    assert await second.request(lambda: second.cache.get("kept")) == b"v"
    assert await second.request(lambda: second.cache.get("other")) == b"y"


async def test_a_request_arriving_during_a_sync_waits_for_the_next_one(
    replicas: tuple[Replica, Replica],
) -> None:
    """A round trip already answered may predate a write: later arrivals must not join it."""
    first, second = replicas
    await first.cache.set("k", b"one", ttl_seconds=60)
    assert await second.request(lambda: second.cache.get("k")) == b"one"
    real = second.near._sync_script
    answered, release = asyncio.Event(), asyncio.Event()

    async def answered_then_held(**kwargs: object) -> object:
        reply = await real(**kwargs)  # Redis has answered: the write below comes after
        answered.set()
        await release.wait()
        return reply

    second.near._sync_script = answered_then_held  # type: ignore[method-assign]
    early = asyncio.create_task(second.request(lambda: second.cache.get("k")))
    await answered.wait()
    await first.cache.set("k", b"two", ttl_seconds=60)
    late = asyncio.create_task(second.request(lambda: second.cache.get("k")))
    await asyncio.sleep(0.05)
    release.set()
    # The early request may read either; the late one arrived after the write finished.
    assert await early in (b"one", b"two")
    assert await late == b"two"


async def test_concurrent_requests_share_round_trips(replicas: tuple[Replica, Replica]) -> None:
    first, _ = replicas
    before = first.near.syncs
    counted = REGISTRY.get_sample_value(SYNCS, {"outcome": "ok"}) or 0.0
    await asyncio.gather(*(first.request(lambda: asyncio.sleep(0)) for _ in range(50)))
    assert 1 <= first.near.syncs - before <= 3
    # Operators see the same round trips on /metrics.
    assert (
        REGISTRY.get_sample_value(SYNCS, {"outcome": "ok"}) == counted + first.near.syncs - before
    )


async def test_a_process_too_far_behind_drops_every_copy(
    replicas: tuple[Replica, Replica],
) -> None:
    first, second = replicas
    await first.cache.set("k", b"one", ttl_seconds=60)
    assert await second.request(lambda: second.cache.get("k")) == b"one"
    await _behind_the_logs_back(second, "k", b"changed")
    for number in range(1100):  # more writes than the log keeps, none of them to "k"
        await first.cache.delete(f"other-{number}")
    assert await second.request(lambda: second.cache.get("k")) == b"changed"


async def test_a_lost_log_drops_every_copy(replicas: tuple[Replica, Replica]) -> None:
    """After a Redis restart (or FLUSHALL) the log starts again under a new id."""
    first, _ = replicas
    await first.cache.set("k", b"one", ttl_seconds=60)
    assert await first.request(lambda: first.cache.get("k")) == b"one"
    await _behind_the_logs_back(first, "k", b"changed")
    await first.client.delete(*(f"{first.prefix}near:{name}" for name in ("id", "seq", "log")))
    assert await first.request(lambda: first.cache.get("k")) == b"changed"


async def test_copies_expire_with_the_entry(replicas: tuple[Replica, Replica]) -> None:
    first, _ = replicas
    await first.cache.set("k", b"one", ttl_seconds=1)
    assert await first.request(lambda: first.cache.get("k")) == b"one"
    await asyncio.sleep(1.1)
    assert await first.request(lambda: first.cache.get("k")) is None


async def test_local_hits_are_counted_in_the_shared_stats(
    replicas: tuple[Replica, Replica],
) -> None:
    first, second = replicas
    await first.cache.set("k", b"one", ttl_seconds=60)

    async def three_lookups() -> None:
        for _ in range(3):
            assert await second.cache.get("k") == b"one"

    await second.request(three_lookups)  # one from Redis, two from the copy
    for _ in range(40):  # counted within a tenth of a second, with no further request
        stats = await first.cache.stats()
        if stats.hits >= 3:
            break
        await asyncio.sleep(0.05)
    assert (stats.hits, stats.misses) == (3, 0)


async def test_redis_down_means_no_copies_and_a_fast_answer() -> None:
    client = create_redis(CLOSED_PORT_URL)
    near = NearCache(client, prefix="fwbtest:")
    try:
        started = time.monotonic()
        failed = REGISTRY.get_sample_value(SYNCS, {"outcome": "failed"}) or 0.0
        assert not await near.sync()
        assert not near.active()
        assert near.failures == 1
        assert REGISTRY.get_sample_value(SYNCS, {"outcome": "failed"}) == failed + 1
        assert time.monotonic() - started < 1
    finally:
        await client.aclose()
