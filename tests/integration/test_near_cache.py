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

from filewallball.adapters.redis.cache import RedisCache
from filewallball.adapters.redis.client import create_redis
from filewallball.adapters.redis.near_cache import Keyspace, NearCache
from filewallball.request_scope import begin_request

T = TypeVar("T")
SYNCS = "filewallball_near_cache_syncs_total"
CLOSED_PORT_URL = "redis://127.0.0.1:1/0"


class Replica:
    """One process: its own connection, near cache and record cache, on the shared Redis."""

    def __init__(self, client: redis.asyncio.Redis, prefix: str) -> None:
        self.client = client
        self.keys = Keyspace(prefix)
        self.near = NearCache(client, prefix=prefix)
        self.cache = RedisCache(
            client, prefix=prefix, name="records", ttl_seconds=60, near=self.near
        )

    async def request(self, work: Callable[[], Awaitable[T]]) -> T:
        """`work` as a request does it: in a context of its own, begun at the edge."""

        async def run() -> T:
            begin_request()
            return await work()

        return await asyncio.create_task(run(), context=contextvars.Context())

    async def get(self, key: str) -> bytes | None:
        """One lookup, in a request of its own."""
        return (await self.request(lambda: self.cache.lookup(key))).value

    async def put(self, key: str, value: bytes, *, ttl_seconds: int = 60) -> None:
        """What a read-through does on a miss (outside a request: straight to Redis)."""
        await self.cache.lookup(key)  # starts an epoch if there is none
        await self.cache.invalidate(key)  # logged, so other processes drop their copies
        await self.client.delete(await self._name(key))  # a fill never overwrites a tombstone
        found = await self.cache.lookup(key)
        assert found.fence is not None
        self.cache._ttl = ttl_seconds
        try:
            await self.cache.fill(key, value, fence=found.fence)
        finally:
            self.cache._ttl = 60

    async def behind_the_logs_back(self, key: str, value: bytes) -> None:
        """Change the Redis entry without logging it: only a copy can still give the old value."""
        await self.client.set(await self._name(key), value)

    async def _name(self, key: str) -> str:
        epoch = await self.client.get(self.keys.epoch)
        assert epoch is not None
        return self.keys.entry(epoch.decode(), f"records:{key}")


@pytest.fixture
async def replicas(redis_server: str, redis_prefix: str) -> AsyncIterator[tuple[Replica, Replica]]:
    first, second = create_redis(redis_server), create_redis(redis_server)
    try:
        yield Replica(first, redis_prefix), Replica(second, redis_prefix)
    finally:
        await first.aclose()
        await second.aclose()


async def test_a_request_reads_its_copy_without_redis(replicas: tuple[Replica, Replica]) -> None:
    first, _ = replicas
    await first.put("k", b"one")
    assert await first.get("k") == b"one"
    await first.behind_the_logs_back("k", b"changed")
    # The copy answers: no round trip was made for it.
    assert await first.get("k") == b"one"
    # Outside a request (a worker, the CLI) Redis answers.
    assert (await first.cache.lookup("k")).value == b"changed"


async def test_an_invalidation_on_one_replica_is_seen_by_the_next_request_on_the_other(
    replicas: tuple[Replica, Replica],
) -> None:
    first, second = replicas
    await first.put("k", b"one")
    assert await second.get("k") == b"one"
    await first.cache.invalidate("k")
    assert await second.get("k") is None
    assert await second.get("k") is None
    # Only the changed entry is dropped: another copy is still served without Redis.
    await first.put("other", b"x")
    await first.put("kept", b"v")
    assert await second.get("kept") == b"v"
    await second.behind_the_logs_back("kept", b"changed")
    await first.put("other", b"y")
    assert await second.get("kept") == b"v"
    assert await second.get("other") == b"y"


async def test_one_request_syncs_once_then_reads_copies(replicas: tuple[Replica, Replica]) -> None:
    first, second = replicas
    await first.put("a", b"1")
    await first.put("b", b"2")
    await second.get("a"), await second.get("b")  # copies kept
    before = second.near.syncs

    async def four_reads() -> list[bytes | None]:
        return [(await second.cache.lookup(k)).value for k in ("a", "b", "a", "b")]

    assert await second.request(four_reads) == [b"1", b"2", b"1", b"2"]
    assert second.near.syncs - before == 1


async def test_a_request_arriving_during_a_sync_waits_for_the_next_one(
    replicas: tuple[Replica, Replica],
) -> None:
    """A round trip already answered may predate a write: later arrivals must not join it."""
    first, second = replicas
    await first.put("k", b"one")
    assert await second.get("k") == b"one"
    real = second.near._sync_script
    answered, release = asyncio.Event(), asyncio.Event()

    async def answered_then_held(**kwargs: object) -> object:
        reply = await real(**kwargs)  # Redis has answered: the write below comes after
        answered.set()
        await release.wait()
        return reply

    second.near._sync_script = answered_then_held  # type: ignore[method-assign]
    early = asyncio.create_task(second.get("k"))
    await answered.wait()
    await first.cache.invalidate("k")
    late = asyncio.create_task(second.get("k"))
    await asyncio.sleep(0.05)
    release.set()
    # The early request may read either; the late one arrived after the write finished.
    assert await early in (b"one", None)
    assert await late is None


async def test_a_lookup_answered_before_an_invalidation_is_not_kept_after_the_sync_past_it(
    replicas: tuple[Replica, Replica],
) -> None:
    """Redis answers a lookup, an invalidation lands, another request's sync applies it, and
    only then does the first lookup's answer arrive: it must not become a copy."""
    first, second = replicas
    await first.put("k", b"one")
    await second.request(lambda: second.near.epoch())  # this process knows the epoch
    real = second.cache._lookup
    answered, release = asyncio.Event(), asyncio.Event()

    async def answered_then_held(**kwargs: object) -> object:
        reply = await real(**kwargs)
        answered.set()
        await release.wait()
        return reply

    second.cache._lookup = answered_then_held  # type: ignore[method-assign]
    slow = asyncio.create_task(second.get("k"))
    await answered.wait()
    await first.cache.invalidate("k")
    await second.request(lambda: second.near.epoch())  # a sync that drops "k"
    release.set()
    assert await slow == b"one"  # that request began before the invalidation
    second.cache._lookup = real  # type: ignore[method-assign]
    assert await second.get("k") is None


async def test_concurrent_requests_share_round_trips(replicas: tuple[Replica, Replica]) -> None:
    first, _ = replicas
    before = first.near.syncs
    counted = REGISTRY.get_sample_value(SYNCS, {"outcome": "ok"}) or 0.0
    await asyncio.gather(*(first.request(first.near.epoch) for _ in range(50)))
    assert 1 <= first.near.syncs - before <= 3
    # Operators see the same round trips on /metrics.
    assert (
        REGISTRY.get_sample_value(SYNCS, {"outcome": "ok"}) == counted + first.near.syncs - before
    )


async def test_a_process_too_far_behind_drops_every_copy(
    replicas: tuple[Replica, Replica],
) -> None:
    first, second = replicas
    await first.put("k", b"one")
    assert await second.get("k") == b"one"
    await second.behind_the_logs_back("k", b"changed")
    for number in range(1100):  # more invalidations than the log keeps, none of them of "k"
        await first.cache.invalidate(f"other-{number}")
    assert await second.get("k") == b"changed"


async def test_a_new_epoch_drops_every_copy(replicas: tuple[Replica, Replica]) -> None:
    """After a Redis restart (or FLUSHALL, or a lapsed lease) the epoch is new: nothing cached
    before it is read again, copies included."""
    first, _ = replicas
    await first.put("k", b"one")
    assert await first.get("k") == b"one"
    await first.client.delete(first.keys.epoch)
    assert await first.get("k") is None


async def test_copies_expire_with_the_entry(replicas: tuple[Replica, Replica]) -> None:
    first, _ = replicas
    await first.put("k", b"one", ttl_seconds=1)
    assert await first.get("k") == b"one"
    await asyncio.sleep(1.1)
    assert await first.get("k") is None


async def test_local_hits_are_counted_in_the_shared_stats(
    replicas: tuple[Replica, Replica],
) -> None:
    first, second = replicas
    await first.put("k", b"one")
    before = await first.cache.stats()

    async def three_lookups() -> None:
        for _ in range(3):
            assert (await second.cache.lookup("k")).value == b"one"

    await second.request(three_lookups)  # one from Redis, two from the copy
    for _ in range(40):  # counted within a tenth of a second, with no further request
        stats = await first.cache.stats()
        if stats.hits - before.hits >= 3:
            break
        await asyncio.sleep(0.05)
    assert (stats.hits - before.hits, stats.misses - before.misses) == (3, 0)


async def test_redis_down_means_no_copies_and_a_fast_answer() -> None:
    client = create_redis(CLOSED_PORT_URL)
    near = NearCache(client, prefix="fwbtest:")
    try:
        started = time.monotonic()
        failed = REGISTRY.get_sample_value(SYNCS, {"outcome": "failed"}) or 0.0

        async def in_a_request() -> str | None:
            begin_request()
            return await near.epoch()

        assert await asyncio.create_task(in_a_request(), context=contextvars.Context()) is None
        assert near.failures == 1
        assert REGISTRY.get_sample_value(SYNCS, {"outcome": "failed"}) == failed + 1
        assert time.monotonic() - started < 1
    finally:
        await client.aclose()
