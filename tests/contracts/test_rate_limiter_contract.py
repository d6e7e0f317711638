"""The RateLimiter contract, in process and on real Redis; then shared budgets and Redis outages."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from urllib.parse import urlsplit

import pytest
import redis
from structlog.testing import capture_logs

from filewallball.adapters.ratelimit import LimitsRateLimiter
from filewallball.domain.rates import RateRule

CLOSED_PORT_URL = "redis://127.0.0.1:1/0"
MakeLimiter = Callable[[], LimitsRateLimiter]


@pytest.fixture(params=["memory", "redis"])
async def make_limiter(request: pytest.FixtureRequest) -> AsyncIterator[MakeLimiter]:
    """Limiters on one storage: the same Redis URI and prefix, or each its own memory."""
    uri: str | None = None
    prefix = "fwb:rl:"
    if request.param == "redis":
        # Looked up only here, so the memory run does not skip when Redis is down.
        uri = request.getfixturevalue("redis_server")
        prefix = request.getfixturevalue("redis_prefix")
    made: list[LimitsRateLimiter] = []

    def make() -> LimitsRateLimiter:
        limiter = LimitsRateLimiter(storage_uri=uri, prefix=prefix)
        made.append(limiter)
        return limiter

    yield make
    for limiter in made:
        assert limiter.fallbacks == 0  # the Redis runs really ran on Redis
        await limiter.aclose()


@pytest.fixture
def limiter(make_limiter: MakeLimiter) -> LimitsRateLimiter:
    return make_limiter()


async def test_allows_the_limit_then_blocks(limiter: LimitsRateLimiter) -> None:
    decisions = [await limiter.hit("client", rule=RateRule.parse("3/minute")) for _ in range(5)]
    assert [d.allowed for d in decisions] == [True, True, True, False, False]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0, 0]
    for decision in decisions:
        assert decision.limit == 3
        assert decision.window_seconds == 60
        assert 1 <= decision.reset_after_seconds <= 60
    # The window started with the first hit: the reset is close to a full window away.
    assert decisions[-1].reset_after_seconds >= 58


async def test_keys_and_rules_are_independent(limiter: LimitsRateLimiter) -> None:
    assert (await limiter.hit("a", rule=RateRule.parse("1/minute"))).allowed
    assert not (await limiter.hit("a", rule=RateRule.parse("1/minute"))).allowed
    assert (await limiter.hit("b", rule=RateRule.parse("1/minute"))).allowed
    # The upload limit and the general limit of one client are counted apart.
    assert (await limiter.hit("a", rule=RateRule.parse("5/minute"))).remaining == 4


async def test_block_lifts_after_the_window(limiter: LimitsRateLimiter) -> None:
    decisions = [await limiter.hit("client", rule=RateRule.parse("2/second")) for _ in range(3)]
    assert [d.allowed for d in decisions] == [True, True, False]
    assert decisions[-1].reset_after_seconds == 1
    await asyncio.sleep(1.1)
    after = await limiter.hit("client", rule=RateRule.parse("2/second"))
    assert after.allowed
    assert after.remaining == 1


async def test_reset_stays_within_the_window(limiter: LimitsRateLimiter) -> None:
    for _ in range(4):
        decision = await limiter.hit("client", rule=RateRule.parse("2 per 3 seconds"))
        assert decision.window_seconds == 3
        assert 1 <= decision.reset_after_seconds <= 3
        await asyncio.sleep(0.4)


async def test_instances_share_a_budget_only_through_redis(
    make_limiter: MakeLimiter, request: pytest.FixtureRequest
) -> None:
    first, second = make_limiter(), make_limiter()
    assert (await first.hit("client", rule=RateRule.parse("2/minute"))).allowed
    assert (await second.hit("client", rule=RateRule.parse("2/minute"))).allowed
    third = await first.hit("client", rule=RateRule.parse("2/minute"))
    # Two replicas on one Redis see one budget; two processes without Redis see their own.
    shared = request.node.callspec.params["make_limiter"] == "redis"
    assert third.allowed is not shared


@pytest.mark.parametrize("limit", [50, 1000])
async def test_concurrent_hits_never_pass_the_budget(
    limiter: LimitsRateLimiter, limit: int
) -> None:
    """Twice the budget at once, in one process: exactly the budget is admitted (the requests
    queued behind a lease are not an outage, and never each get a budget of their own)."""
    rule = RateRule.parse(f"{limit}/minute")
    decisions = await asyncio.gather(*(limiter.hit("client", rule=rule) for _ in range(2 * limit)))
    assert sum(d.allowed for d in decisions) == limit
    refused = [d for d in decisions if not d.allowed]
    assert all(1 <= d.reset_after_seconds <= 60 and d.remaining == 0 for d in refused)


def test_validate_rule() -> None:
    assert str(RateRule.parse("600/minute")) == "600/minute"
    assert str(RateRule.parse("10 per 2 seconds")) == "10 per 2 seconds"
    assert RateRule.parse("10 per 2 seconds").window_seconds == 2
    assert RateRule.parse("5/Hours").window_seconds == 3600
    for bad in ["", "lots", "10/fortnight", "0/minute", "1/second;100/minute"]:
        with pytest.raises(ValueError, match="invalid rate limit"):
            RateRule.parse(bad)


# Redis only.


async def test_keys_live_under_the_prefix(redis_server: str, redis_prefix: str) -> None:
    limiter = LimitsRateLimiter(storage_uri=redis_server, prefix=redis_prefix)
    try:
        await limiter.hit("client", rule=RateRule.parse("5/minute"))
    finally:
        await limiter.aclose()
    client = redis.Redis.from_url(redis_server)
    try:
        keys = list(client.scan_iter(match=f"{redis_prefix}*"))
        assert len(keys) == 1
        assert 0 < client.ttl(keys[0]) <= 60
    finally:
        client.close()


async def test_a_large_budget_is_leased_a_few_hits_at_a_time(
    redis_server: str, redis_prefix: str
) -> None:
    limiter = LimitsRateLimiter(storage_uri=redis_server, prefix=redis_prefix)
    try:
        decisions = [
            await limiter.hit("client", rule=RateRule.parse("100000/minute")) for _ in range(500)
        ]
    finally:
        await limiter.aclose()
    assert all(d.allowed for d in decisions)
    # Each hit takes one from the budget, as if it had been counted in Redis on its own.
    assert [d.remaining for d in decisions] == list(range(99_999, 99_499, -1))
    assert limiter.round_trips <= 10
    client = redis.Redis.from_url(redis_server)
    try:
        (key,) = client.scan_iter(match=f"{redis_prefix}*")
        counted = int(client.get(key) or 0)
    finally:
        client.close()
    # Redis counted every hit, plus at most one lease not yet spent.
    assert 500 <= counted <= 600


async def test_concurrent_hits_wait_for_one_lease_instead_of_each_taking_one(
    redis_server: str, redis_prefix: str
) -> None:
    limiter = LimitsRateLimiter(storage_uri=redis_server, prefix=redis_prefix)
    try:
        await limiter.hit("client", rule=RateRule.parse("100000/minute"))  # the window's first hit
        decisions = await asyncio.gather(
            *(limiter.hit("client", rule=RateRule.parse("100000/minute")) for _ in range(300))
        )
    finally:
        await limiter.aclose()
    assert all(d.allowed for d in decisions)
    assert limiter.round_trips <= 6
    client = redis.Redis.from_url(redis_server)
    try:
        (key,) = client.scan_iter(match=f"{redis_prefix}*")
        assert 301 <= int(client.get(key) or 0) <= 401
    finally:
        client.close()


async def test_leases_never_let_a_shared_budget_overflow(
    redis_server: str, redis_prefix: str
) -> None:
    replicas = [LimitsRateLimiter(storage_uri=redis_server, prefix=redis_prefix) for _ in range(2)]
    try:
        decisions = [
            await replicas[n % 2].hit("client", rule=RateRule.parse("1000/minute"))
            for n in range(1200)
        ]
    finally:
        for limiter in replicas:
            await limiter.aclose()
    allowed = sum(d.allowed for d in decisions)
    # Never more than the limit; fewer only by what the other replica leased and left unspent
    # (at most 1/64 of what was left when it leased).
    assert 1000 - 2 * 16 <= allowed <= 1000
    assert not decisions[-1].allowed
    assert sum(r.round_trips for r in replicas) < 600


_WORKER = """
import asyncio, sys
from filewallball.adapters.ratelimit import LimitsRateLimiter
from filewallball.domain.rates import RateRule

async def main() -> None:
    limiter = LimitsRateLimiter(storage_uri=sys.argv[1], prefix=sys.argv[2])
    rule = RateRule.parse("10/minute")
    allowed = [(await limiter.hit("shared", rule=rule)).allowed for _ in range(15)]
    await limiter.aclose()
    print(sum(allowed), limiter.fallbacks)

asyncio.run(main())
"""


def test_two_processes_share_one_redis_budget(redis_server: str, redis_prefix: str) -> None:
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, redis_server, redis_prefix],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = []
    for worker in workers:
        out, _ = worker.communicate(timeout=60)
        assert worker.returncode == 0
        results.append([int(n) for n in out.split()])
    assert [fallbacks for _, fallbacks in results] == [0, 0]
    assert sum(allowed for allowed, _ in results) == 10


# Redis outages.


async def test_closed_port_falls_back_quickly_and_logs_once() -> None:
    limiter = LimitsRateLimiter(storage_uri=CLOSED_PORT_URL, fallback_cooldown_seconds=0.1)
    try:
        started = time.monotonic()
        with capture_logs() as logs:
            decisions = []
            for _ in range(5):
                decisions.append(await limiter.hit("client", rule=RateRule.parse("3/minute")))
                await asyncio.sleep(0.05)  # crosses the cooldown: Redis is retried and fails again
        assert time.monotonic() - started < 2
    finally:
        await limiter.aclose()
    # The fallback still enforces the limit, in this process.
    assert [d.allowed for d in decisions] == [True, True, True, False, False]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0, 0]
    assert all(1 <= d.reset_after_seconds <= 60 for d in decisions)
    assert limiter.fallbacks == 5
    assert [e["event"] for e in logs] == ["rate_limit_fallback"]
    assert logs[0]["error_type"] == "ConnectionError"


@pytest.fixture
async def silent_redis_url() -> AsyncIterator[str]:
    """A port that accepts connections and never answers: Redis stalled, not down."""
    connections: list[asyncio.StreamWriter] = []

    async def accept_and_say_nothing(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)

    server = await asyncio.start_server(accept_and_say_nothing, "127.0.0.1", 0)
    try:
        yield f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}/0"
    finally:
        for writer in connections:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_a_silent_redis_costs_at_most_the_timeout(silent_redis_url: str) -> None:
    limiter = LimitsRateLimiter(storage_uri=silent_redis_url)
    try:
        started = time.monotonic()
        decisions = [await limiter.hit("client", rule=RateRule.parse("1/minute")) for _ in range(3)]
        # One call waits out the timeout; the breaker answers the others at once.
        assert time.monotonic() - started < 1.5
    finally:
        await limiter.aclose()
    assert [d.allowed for d in decisions] == [True, False, False]
    assert limiter.fallbacks == 3


async def test_concurrent_hits_on_a_silent_redis_wait_out_one_timeout(
    silent_redis_url: str,
) -> None:
    """Requests queued behind the one that found Redis silent fall back at once, not in turn."""
    limiter = LimitsRateLimiter(storage_uri=silent_redis_url)
    rule = RateRule.parse("5/minute")
    try:
        started = time.monotonic()
        decisions = await asyncio.gather(*(limiter.hit("client", rule=rule) for _ in range(20)))
        assert time.monotonic() - started < 1.5
    finally:
        await limiter.aclose()
    assert sum(d.allowed for d in decisions) == 5  # the process's own budget while Redis is out
    assert limiter.fallbacks == 20


class _Proxy:
    """A TCP relay to Redis that can be cut and restored on the same port, to stage an outage."""

    def __init__(self, target: str) -> None:
        parts = urlsplit(target)
        self._target = (parts.hostname or "127.0.0.1", parts.port or 6379)
        self._db_path = parts.path
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self.port = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}{self._db_path}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        self._writers.clear()
        await self._server.wait_closed()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
        self._writers += [writer, upstream_writer]
        await asyncio.gather(
            _pipe(reader, upstream_writer), _pipe(upstream_reader, writer), return_exceptions=True
        )


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


async def test_recovers_to_redis_after_the_cooldown(redis_server: str, redis_prefix: str) -> None:
    proxy = _Proxy(redis_server)
    await proxy.start()
    limiter = LimitsRateLimiter(
        storage_uri=proxy.url, prefix=redis_prefix, fallback_cooldown_seconds=0.1
    )
    direct = LimitsRateLimiter(storage_uri=redis_server, prefix=redis_prefix)
    try:
        with capture_logs() as logs:
            assert (await limiter.hit("client", rule=RateRule.parse("5/minute"))).remaining == 4
            await proxy.stop()
            # Redis is gone: the in-process budget starts afresh.
            assert (await limiter.hit("client", rule=RateRule.parse("5/minute"))).remaining == 4
            assert limiter.fallbacks == 1
            await proxy.start()
            await asyncio.sleep(0.15)
            # Back on Redis: the budget counts on from the hit before the outage.
            assert (await limiter.hit("client", rule=RateRule.parse("5/minute"))).remaining == 3
            assert (await direct.hit("client", rule=RateRule.parse("5/minute"))).remaining == 2
        assert limiter.fallbacks == 1
        assert [e["event"] for e in logs] == ["rate_limit_fallback", "rate_limit_recovered"]
    finally:
        await limiter.aclose()
        await direct.aclose()
        await proxy.stop()
