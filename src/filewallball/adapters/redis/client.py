"""Redis clients that give up quickly, and the errors that mean "Redis is unreachable"."""

from __future__ import annotations

import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

# OSError covers the builtin ConnectionError and TimeoutError a socket may raise directly.
REDIS_FAILURES = (RedisError, OSError)


def create_redis(url: str, *, timeout_seconds: float = 0.5) -> redis.asyncio.Redis:
    """A client that gives up quickly: an outage costs a request half a second, not a hang."""
    return redis.asyncio.Redis.from_url(
        url,
        socket_timeout=timeout_seconds,
        socket_connect_timeout=timeout_seconds,
        # redis-py retries 3 times with backoff by default; our callers decide instead.
        retry=Retry(NoBackoff(), 0),
    )
