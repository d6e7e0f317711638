"""A Redis cache that degrades to a miss, never to an error, when Redis is down."""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TypeVar

import redis.asyncio
import structlog
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from filewallball.adapters.near_cache import NearCache
from filewallball.domain.errors import DependencyUnavailable
from filewallball.domain.ports import Cache, CacheStats

T = TypeVar("T")

# OSError covers the builtin ConnectionError and TimeoutError a socket may raise directly.
_FAILURES = (RedisError, OSError)
_log = structlog.get_logger()

# GET that also counts the hit or miss in a hash every replica shares: one round trip, exact.
# Returns {value or false, milliseconds to live}.
_COUNTED_GET = """
local value = redis.call('GET', KEYS[1])
local field = 'misses'
if value then field = 'hits' end
redis.call('HINCRBY', KEYS[2], field, 1)
redis.call('HSETNX', KEYS[2], 'since', redis.call('TIME')[1])
return {value, redis.call('PTTL', KEYS[1])}
"""


def create_redis(url: str, *, timeout_seconds: float = 0.5) -> redis.asyncio.Redis:
    """A client that gives up quickly: an outage costs a request half a second, not a hang."""
    return redis.asyncio.Redis.from_url(
        url,
        socket_timeout=timeout_seconds,
        socket_connect_timeout=timeout_seconds,
        # redis-py retries 3 times with backoff by default; RedisCache's breaker decides instead.
        retry=Retry(NoBackoff(), 0),
    )


class RedisCache(Cache):
    """Keys under `prefix`; after a failure, Redis is skipped for `cooldown_seconds`.

    Lookups are counted in the hash `<prefix>#stats`, shared by every process using the prefix.
    With `near`, a request that synced reads copies kept in this process, and every overwrite
    or delete is logged for the other processes to drop their copies (see near_cache).
    """

    def __init__(
        self,
        client: redis.asyncio.Redis,
        *,
        prefix: str,
        cooldown_seconds: float = 5.0,
        near: NearCache | None = None,
    ) -> None:
        self._client = client
        self._near = near
        self._prefix = prefix
        self._stats_key = f"{prefix}#stats"  # cache keys never start with '#'
        self._counted_get = client.register_script(_COUNTED_GET)
        self._cooldown = cooldown_seconds
        self._skip_until = 0.0
        # Operations answered without Redis (skipped during a cooldown, or failed), for metrics.
        self.bypassed = 0

    async def get(self, key: str) -> bytes | None:
        name = self._prefix + key
        near = self._near
        if near is not None and (copy := near.get(name, stats_key=self._stats_key)) is not None:
            return copy
        asked = time.monotonic()
        reply = await self._guarded(
            "get", lambda: self._counted_get(keys=[name, self._stats_key]), None
        )
        if reply is None:
            return None
        value, ttl_ms = reply
        # The client is made without decode_responses, so a hit is bytes.
        if not isinstance(value, bytes):
            return None
        if near is not None and ttl_ms > 0:
            # Counted from before the question: the copy never outlives the entry.
            near.keep(name, value, expires=asked + ttl_ms / 1000)
        return value

    async def set(self, key: str, value: bytes, *, ttl_seconds: int) -> None:
        near = self._near
        name = self._prefix + key
        if near is not None:
            await self._guarded(
                "set", lambda: near.write(name, value, ttl_seconds=ttl_seconds), None
            )
            return
        await self._guarded("set", lambda: self._client.set(name, value, ex=ttl_seconds), None)

    async def add(self, key: str, value: bytes, *, ttl_seconds: int) -> bool:
        stored = await self._guarded(
            "add",
            lambda: self._client.set(self._prefix + key, value, ex=ttl_seconds, nx=True),
            None,
        )
        return bool(stored)

    async def delete(self, key: str) -> None:
        near = self._near
        name = self._prefix + key
        if near is not None:
            await self._guarded("delete", lambda: near.write(name, None), None)
            return
        await self._guarded("delete", lambda: self._client.delete(name), None)

    async def ping(self) -> None:
        """Always asks Redis (the breaker does not apply); its answer also resets the breaker."""
        try:
            await self._client.ping()
        except _FAILURES as error:
            self._trip()
            raise DependencyUnavailable("redis", f"redis is unavailable: {error}") from error
        self._skip_until = 0.0

    async def stats(self) -> CacheStats:
        """Counts from the shared hash; entries by SCAN (admin use: it walks the keyspace)."""
        try:
            counts = await self._client.hgetall(self._stats_key)
            entries, own = 0, self._stats_key.encode()
            async for raw in self._client.scan_iter(
                match=_glob_escape(self._prefix) + "*", count=1000
            ):
                entries += raw != own
        except _FAILURES as error:
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

    async def _guarded(self, operation: str, call: Callable[[], Awaitable[T]], fallback: T) -> T:
        if time.monotonic() < self._skip_until:
            self.bypassed += 1
            return fallback
        try:
            return await call()
        except _FAILURES as error:
            self.bypassed += 1
            self._trip()
            # Logged once per cooldown at most: skipped calls are only counted.
            _log.warning(
                "cache_unavailable",
                operation=operation,
                error=str(error),
                error_type=type(error).__name__,
            )
            return fallback

    def _trip(self) -> None:
        self._skip_until = time.monotonic() + self._cooldown


def _glob_escape(text: str) -> str:
    """`text` matched literally by a Redis glob pattern."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)
