"""Rate limits on the `limits` library: one budget in Redis, or in process; never an error.

`limits` names the keys and keeps the in-process windows (rules come parsed, as RateRule). For Redis, one
Lua script does what its fixed-window strategy does in three round trips (count the hit, read
the count, read the expiry): the same keys and the same counting.

With a large budget, a process takes a few hits at once (a lease: INCRBY n) and spends them
without asking Redis again until they run out or the window ends. A lease is at most 1/64 of
what is left in the window (and at most 100), so a client with a small limit, or close to its
limit, is still counted hit by hit, and hits leased but unspent can refuse a client early by
at most that share per process.
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
from dataclasses import dataclass

import redis.asyncio
import structlog
from limits import (
    RateLimitItem,
    RateLimitItemPerDay,
    RateLimitItemPerHour,
    RateLimitItemPerMinute,
    RateLimitItemPerMonth,
    RateLimitItemPerSecond,
    RateLimitItemPerYear,
)
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import FixedWindowRateLimiter

from filewallball.adapters.redis.client import REDIS_FAILURES, create_redis
from filewallball.domain.ports import RateLimiter
from filewallball.domain.rates import RateDecision, RateRule

# Longer than this and Redis counts as down: the request is decided in process instead.
_REDIS_TIMEOUT_SECONDS = 0.5
# OSError covers the socket errors and the TimeoutError of asyncio.timeout.
_log = structlog.get_logger()
# A lease is at most this share of what is left in the window, and at most _MAX_LEASE hits.
_LEASE_SHARE = 64
_MAX_LEASE = 100
_MAX_LEASES = 10_000


_GRANULARITIES: dict[str, type[RateLimitItem]] = {
    "second": RateLimitItemPerSecond,
    "minute": RateLimitItemPerMinute,
    "hour": RateLimitItemPerHour,
    "day": RateLimitItemPerDay,
    "month": RateLimitItemPerMonth,
    "year": RateLimitItemPerYear,
}


class _RedisSkipped(Exception):
    """The request that took the lease this one waited for found Redis down."""


@dataclass(slots=True)
class _Lease:
    """Hits counted in Redis ahead of time, for this process to spend in the current window."""

    left: int  # hits leased and not yet spent
    count: int  # the window's count that the next hit spent from the lease makes
    until: float  # monotonic end of the window
    next_size: int  # how many to lease next time


# A fixed window: the first hit creates the counter with the window as its expiry; every hit
# (refused ones too, as in `limits`) adds one. Returns the count and the milliseconds left.
_HIT = """
local count = redis.call('INCRBY', KEYS[1], ARGV[2])
local left = redis.call('PTTL', KEYS[1])
if left < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  left = tonumber(ARGV[1])
end
return {count, left}
"""


@functools.lru_cache(maxsize=256)
def _item(rule: RateRule) -> RateLimitItem:
    """The `limits` item of a rule: the same amount, window and key names as `limits.parse`."""
    return _GRANULARITIES[rule.granularity](rule.amount, rule.multiples)


class LimitsRateLimiter(RateLimiter):
    """Fixed-window limits shared through Redis (or in process without a URI).

    While Redis is down each process enforces the limits alone, from memory, and Redis is
    tried again after `fallback_cooldown_seconds`.
    """

    def __init__(
        self,
        *,
        storage_uri: str | None,
        prefix: str = "fwb:rl:",
        fallback_cooldown_seconds: float = 5.0,
    ) -> None:
        # Fixed window, not moving window: one counter per key whose expiry *is* the reset, so
        # Retry-After and RateLimit-Reset cost one TTL read and the whole budget is back at that
        # moment. A moving window stores a timestamp per request (600 for "600/minute") and its
        # reset frees a single slot. The price: a burst of up to twice the limit across a boundary.
        self._memory = FixedWindowRateLimiter(MemoryStorage())
        self._client: redis.asyncio.Redis | None = None
        self._prefix = prefix
        if storage_uri is not None:
            # Our own client gives short socket timeouts and no retries, and a pool we can close.
            self._client = create_redis(storage_uri, timeout_seconds=_REDIS_TIMEOUT_SECONDS)
            self._hit = self._client.register_script(_HIT)
        self._leases: dict[str, _Lease] = {}
        # Windows whose lease is being taken, resolved when it is (one round trip, not one each).
        self._leasing: dict[str, asyncio.Future[None]] = {}
        self._cooldown = fallback_cooldown_seconds
        self._skip_until = 0.0
        self._degraded = False
        # Decisions made in process because Redis was down or skipped, for metrics.
        self.fallbacks = 0
        # Calls to Redis (a lease serves several hits with one).
        self.round_trips = 0

    async def hit(self, key: str, *, rule: RateRule) -> RateDecision:
        item = _item(rule)
        if self._client is None:
            return await _decide(self._memory, item, key)
        if time.monotonic() >= self._skip_until:
            spent = self._spend_lease(item, key)
            if spent is not None:
                return spent
            try:
                decision = await self._decide_in_redis(item, key)
            except _RedisSkipped:
                pass  # another request just found Redis down
            except REDIS_FAILURES as error:
                self._trip(error)
            else:
                self._recover()
                return decision
        self.fallbacks += 1
        return await _decide(self._memory, item, key)

    def _name(self, item: RateLimitItem, key: str) -> str:
        # The key `limits` itself would use, under our prefix.
        return f"{self._prefix}{item.key_for(key)}"

    def _spend_lease(self, item: RateLimitItem, key: str) -> RateDecision | None:
        """A hit from this process's lease on the window, or None if there is none left."""
        lease = self._leases.get(self._name(item, key))
        now = time.monotonic()
        if lease is None or lease.left <= 0 or now >= lease.until:
            return None
        lease.left -= 1
        lease.count += 1
        return _decision(item, lease.count - 1, lease.until - now)

    async def _decide_in_redis(self, item: RateLimitItem, key: str) -> RateDecision:
        name = self._name(item, key)
        while (leasing := self._leasing.get(name)) is not None:
            # Another request is taking a lease on this window: wait, then spend from it. Only
            # Redis's answer has a deadline: a queue of requests waiting here is not an outage
            # (counting them as one sent each to a budget of its own, in process).
            await asyncio.shield(leasing)
            spent = self._spend_lease(item, key)
            if spent is not None:
                return spent
            if time.monotonic() < self._skip_until:
                raise _RedisSkipped
        done = self._leasing[name] = asyncio.get_running_loop().create_future()
        try:
            return await self._lease(item, name)
        finally:
            if self._leasing.get(name) is done:
                del self._leasing[name]
            done.set_result(None)

    async def _lease(self, item: RateLimitItem, name: str) -> RateDecision:
        window = item.get_expiry()
        now = time.monotonic()
        lease = self._leases.get(name)
        size = lease.next_size if lease is not None and now < lease.until else 1
        self.round_trips += 1
        # asyncio.timeout, not wait_for: no extra task per request.
        async with asyncio.timeout(_REDIS_TIMEOUT_SECONDS):
            count, left_ms = await self._hit(keys=[name], args=[window * 1000, size])
        count, until = int(count), time.monotonic() + int(left_ms) / 1000
        # Hits of this lease within the limit: all, some (the rest refused), or none.
        granted = min(max(item.amount - (count - size), 0), size)
        if len(self._leases) >= _MAX_LEASES:
            self._leases = {k: v for k, v in self._leases.items() if v.until > now}
        first = count - size + 1  # the count this hit makes
        # Hits left of a lease that a concurrent request took on the same window stay ours.
        current = self._leases.get(name)
        same_window = current is not None and abs(current.until - until) < 0.5
        carried = current.left if current is not None and same_window else 0
        self._leases[name] = _Lease(
            left=max(granted - 1, 0) + carried,
            count=first + 1,
            until=until,
            next_size=min(max((item.amount - count) // _LEASE_SHARE, 1), _MAX_LEASE),
        )
        return _decision(item, first if granted else count, until - time.monotonic())

    async def aclose(self) -> None:
        """Close the Redis connections, if any."""
        if self._client is not None:
            await self._client.aclose()

    def _trip(self, error: Exception) -> None:
        self._skip_until = time.monotonic() + self._cooldown
        # Logged once per outage: failed retries after each cooldown are only counted.
        if not self._degraded:
            self._degraded = True
            _log.warning(
                "rate_limit_fallback",
                error=str(error),
                error_type=type(error).__name__,
                detail="limits are enforced per process until Redis answers again",
            )

    def _recover(self) -> None:
        if self._degraded:
            self._degraded = False
            _log.info("rate_limit_recovered")


def _decision(item: RateLimitItem, count: int, left_seconds: float) -> RateDecision:
    """The decision for a hit that made the window's count `count`."""
    window = item.get_expiry()
    return RateDecision(
        allowed=count <= item.amount,
        limit=item.amount,
        remaining=max(item.amount - count, 0),
        # Rounded up: Retry-After never sends a client back before the window ends.
        reset_after_seconds=min(max(math.ceil(left_seconds), 1), window),
        window_seconds=window,
    )


async def _decide(limiter: FixedWindowRateLimiter, item: RateLimitItem, key: str) -> RateDecision:
    allowed = await limiter.hit(item, key)
    stats = await limiter.get_window_stats(item, key)
    window = item.get_expiry()
    reset_after = math.ceil(stats.reset_time - time.time())
    return RateDecision(
        allowed=allowed,
        limit=item.amount,
        # The window may expire between the hit and the read: a refusal never shows room left.
        remaining=stats.remaining if allowed else 0,
        # The window may have just expired (reset now); a client still waits at least a second.
        reset_after_seconds=min(max(reset_after, 1), window),
        window_seconds=window,
    )
