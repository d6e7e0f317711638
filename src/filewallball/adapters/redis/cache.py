"""A Redis cache that every replica shares, exact across outages and restarts (see near_cache)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import redis.asyncio
import structlog

from filewallball.adapters.metrics import CACHE
from filewallball.adapters.redis.client import REDIS_FAILURES
from filewallball.adapters.redis.near_cache import (
    LEASE_SECONDS,
    LOG_LENGTH,
    NearCache,
    new_epoch,
    renewed_epoch,
)
from filewallball.adapters.redis.near_cache import Keyspace as Keyspace
from filewallball.domain.errors import DependencyUnavailable
from filewallball.domain.ports import Cache, Cached, CacheStats

T = TypeVar("T")

_log = structlog.get_logger()
TOMBSTONE = b"-"
# Past the lease: a renewal sent just before an outage may still land a moment later.
_LEASE_MARGIN_SECONDS = 0.5
_RETRY_SECONDS = 0.1
# Lookups counted here reach the shared counts (GET /stats/cache) within this delay.
_COUNTS_FLUSH_SECONDS = 0.1

# KEYS: epoch, sequence; ARGV: lease in ms, a new epoch (used when there is none), the entry's
# name after the epoch, the entries' prefix. Returns {epoch, value or false, ms to live, sequence}.
_LOOKUP = (
    renewed_epoch(lease="ARGV[1]", new="ARGV[2]")
    + """
local name = ARGV[4] .. epoch .. ':' .. ARGV[3]
local seq = tonumber(redis.call('GET', KEYS[2]) or '0')
return {epoch, redis.call('GET', name) or false, redis.call('PTTL', name), seq}
"""
)

# KEYS: epoch; ARGV: the fence (the lookup's epoch), entries' prefix, entry name, value, ttl.
# A fill is refused under any other epoch, and never overwrites (a tombstone wins).
_FILL = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local name = ARGV[2] .. ARGV[1] .. ':' .. ARGV[3]
if redis.call('SET', name, ARGV[4], 'NX', 'EX', ARGV[5]) then return 1 end
return 0
"""

# KEYS: epoch, sequence, log; ARGV: entries' prefix, entry name, ttl, log length. The tombstone
# and its log record are one step. With no epoch nothing is cached, and nothing needs doing.
_INVALIDATE = """
local epoch = redis.call('GET', KEYS[1])
if not epoch then return false end
local name = ARGV[1] .. epoch .. ':' .. ARGV[2]
redis.call('SET', name, '-', 'EX', ARGV[3])
redis.call('INCR', KEYS[2])
redis.call('LPUSH', KEYS[3], name)
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[4]) - 1)
return name
"""


class RedisCache(Cache):
    """The cache `name` under `prefix`, shared by every process using the prefix.

    Entries live `ttl_seconds`. After a failed lookup, lookups skip Redis for `cooldown_seconds`
    (misses, read from the database); invalidations are never skipped. Lookups are counted here,
    once, into Prometheus and into the hash `<prefix>cache:stats:<name>` every replica shares.
    With `near`, a task reads the copies its process keeps once it has synced (see near_cache).
    """

    def __init__(
        self,
        client: redis.asyncio.Redis,
        *,
        prefix: str,
        name: str,
        ttl_seconds: int,
        cooldown_seconds: float = 5.0,
        near: NearCache | None = None,
    ) -> None:
        self._client = client
        self._near = near
        self._keys = Keyspace(prefix)
        self._name = name
        self._ttl = ttl_seconds
        self._stats_key = f"{prefix}cache:stats:{name}"
        self._lookup = client.register_script(_LOOKUP)
        self._fill = client.register_script(_FILL)
        self._invalidate = client.register_script(_INVALIDATE)
        self._cooldown = cooldown_seconds
        self._skip_until = 0.0
        self._hit_counter = CACHE.labels(name, "hit")
        self._miss_counter = CACHE.labels(name, "miss")
        self._hits = 0
        self._misses = 0
        self._flush_scheduled = False
        # Operations answered without Redis (skipped during a cooldown, or failed), for metrics.
        self.bypassed = 0

    def _suffix(self, key: str) -> str:
        return f"{self._name}:{key}"

    async def lookup(self, key: str) -> Cached:
        suffix = self._suffix(key)
        near = self._near
        if near is not None and (epoch := await near.epoch()) is not None:
            copy = near.copy(self._keys.entry(epoch, suffix))
            if copy is not None:
                self._count(hit=copy != TOMBSTONE)
                return Cached(None) if copy == TOMBSTONE else Cached(copy)
        asked = time.monotonic()
        reply = await self._guarded("lookup", lambda: self._call_lookup(suffix))
        if reply is None:
            self._count(hit=False)
            return Cached(None)
        epoch, value, ttl_ms, seq = reply
        self._count(hit=value is not None and value != TOMBSTONE)
        if value is None:
            return Cached(None, fence=epoch)
        if near is not None and ttl_ms > 0:
            # Counted from before the question: the copy never outlives the entry.
            name = self._keys.entry(epoch, suffix)
            near.keep(epoch, seq, name, value, expires=asked + ttl_ms / 1000)
        return Cached(None) if value == TOMBSTONE else Cached(value)

    async def _call_lookup(self, suffix: str) -> tuple[str, bytes | None, int, int]:
        keys = self._keys
        epoch, value, ttl_ms, seq = await self._lookup(
            keys=[keys.epoch, keys.sequence],
            args=[int(LEASE_SECONDS * 1000), new_epoch(), suffix, keys.entries],
        )
        # The client is made without decode_responses: a hit is bytes, a miss None (false).
        return epoch.decode(), value if isinstance(value, bytes) else None, int(ttl_ms), int(seq)

    async def fill(self, key: str, value: bytes, *, fence: str) -> None:
        keys = self._keys
        await self._guarded(
            "fill",
            lambda: self._fill(
                keys=[keys.epoch],
                args=[fence, keys.entries, self._suffix(key), value, self._ttl],
            ),
        )

    async def invalidate(self, key: str) -> None:
        """Tombstone `key` and log it; while Redis cannot be reached, retry until it can, or
        until the epoch's lease has surely lapsed (then nothing cached before is readable)."""
        keys = self._keys
        suffix = self._suffix(key)
        gave_up_at: float | None = None
        while True:
            try:
                name = await self._invalidate(
                    keys=[keys.epoch, keys.sequence, keys.log],
                    args=[keys.entries, suffix, self._ttl, LOG_LENGTH],
                )
            except REDIS_FAILURES as error:
                now = time.monotonic()
                if gave_up_at is None:
                    gave_up_at = now + LEASE_SECONDS + _LEASE_MARGIN_SECONDS
                    self._trip()
                    _log.warning(
                        "cache_invalidation_delayed",
                        cache=self._name,
                        error=str(error) or type(error).__name__,
                        wait_seconds=LEASE_SECONDS + _LEASE_MARGIN_SECONDS,
                    )
                if now >= gave_up_at:
                    # In an outage nobody renewed the lease: the epoch is gone with its copies.
                    _log.info("cache_invalidation_by_lapse", cache=self._name)
                    return
                await asyncio.sleep(min(_RETRY_SECONDS, gave_up_at - now))
                continue
            if isinstance(name, bytes) and self._near is not None:
                self._near.drop(name.decode())
            return

    async def ping(self) -> None:
        """Always asks Redis (the breaker does not apply); its answer also resets the breaker."""
        try:
            await self._client.ping()
        except REDIS_FAILURES as error:
            self._trip()
            raise DependencyUnavailable("redis", f"redis is unavailable: {error}") from error
        self._skip_until = 0.0

    async def stats(self) -> CacheStats:
        """Counts from the shared hash; entries of the current epoch by SCAN (admin use)."""
        try:
            await self._flush_counts()
            counts = await self._client.hgetall(self._stats_key)
            epoch = await self._client.get(self._keys.epoch)
            entries = 0
            if isinstance(epoch, bytes):
                pattern = _glob_escape(self._keys.entry(epoch.decode(), self._suffix(""))) + "*"
                names = [raw async for raw in self._client.scan_iter(match=pattern, count=1000)]
                # One round trip per thousand names, not one per name.
                for start in range(0, len(names), 1000):
                    values = await self._client.mget(names[start : start + 1000])
                    entries += sum(value not in (None, TOMBSTONE) for value in values)
        except REDIS_FAILURES as error:
            raise DependencyUnavailable("redis", f"redis is unavailable: {error}") from error
        since = counts.get(b"since")
        return CacheStats(
            backend="redis",
            shared=True,
            hits=int(counts.get(b"hits", 0)),
            misses=int(counts.get(b"misses", 0)),
            entries=entries,
            since=datetime.fromtimestamp(int(since), UTC) if since else None,
        )

    # -- counting -------------------------------------------------------------------------

    def _count(self, *, hit: bool) -> None:
        """The one place a lookup is counted: Prometheus now, the shared hash shortly."""
        if hit:
            self._hit_counter.inc()
            self._hits += 1
        else:
            self._miss_counter.inc()
            self._misses += 1
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_later(_COUNTS_FLUSH_SECONDS, self._schedule_flush)

    def _schedule_flush(self) -> None:
        task = asyncio.get_running_loop().create_task(self._flush_counts())
        task.add_done_callback(_ignore_result)

    async def _flush_counts(self) -> None:
        self._flush_scheduled = False
        hits, misses = self._hits, self._misses
        if not hits and not misses:
            return
        self._hits = self._misses = 0
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.hincrby(self._stats_key, "hits", hits)
                pipe.hincrby(self._stats_key, "misses", misses)
                pipe.hsetnx(self._stats_key, "since", int(time.time()))
                await pipe.execute()
        except REDIS_FAILURES:
            pass  # counts are statistics: an outage loses the ones counted meanwhile

    # -- the breaker ----------------------------------------------------------------------

    async def _guarded(self, operation: str, call: Callable[[], Awaitable[T]]) -> T | None:
        if time.monotonic() < self._skip_until:
            self.bypassed += 1
            return None
        try:
            return await call()
        except REDIS_FAILURES as error:
            self.bypassed += 1
            self._trip()
            # Logged once per cooldown at most: skipped calls are only counted.
            _log.warning(
                "cache_unavailable",
                operation=operation,
                error=str(error),
                error_type=type(error).__name__,
            )
            return None

    def _trip(self) -> None:
        self._skip_until = time.monotonic() + self._cooldown


def _ignore_result(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


def _glob_escape(text: str) -> str:
    """`text` matched literally by a Redis glob pattern."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)
