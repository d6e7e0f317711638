"""A PostgreSQL database and a Redis key prefix of the benchmark's own, removed afterwards."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from bench.procs import BenchError


async def _pg_execute(admin_dsn: str, statement: str) -> None:
    import asyncpg  # type: ignore[import-untyped]

    conn = await asyncpg.connect(admin_dsn, timeout=5)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def check_postgres(admin_dsn: str) -> None:
    try:
        asyncio.run(_pg_execute(admin_dsn, "SELECT 1"))
    except Exception as error:  # any failure to connect means: no usable PostgreSQL
        raise BenchError(f"PostgreSQL at {admin_dsn} is unreachable: {error!r}") from error


def check_redis(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        client.ping()
    except Exception as error:
        raise BenchError(f"Redis at {url} is unreachable: {error!r}") from error
    finally:
        client.close()


@contextmanager
def postgres_database(admin_dsn: str) -> Iterator[str]:
    """A fresh database `fwb_bench_<hex>` (its asyncpg SQLAlchemy URL), dropped at the end.

    Only this database is ever created or dropped: never `postgres`, `test` or any other.
    """
    name = f"fwb_bench_{uuid.uuid4().hex[:12]}"
    asyncio.run(_pg_execute(admin_dsn, f'CREATE DATABASE "{name}"'))
    try:
        base = admin_dsn.rsplit("/", 1)[0]
        yield f"{base}/{name}".replace("postgresql://", "postgresql+asyncpg://", 1)
    finally:
        asyncio.run(_pg_execute(admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextmanager
def redis_prefix(url: str) -> Iterator[str]:
    """A key prefix `fwbbench:<hex>:`; its keys (and its job queue's) are deleted at the end."""
    import redis

    prefix = f"fwbbench:{uuid.uuid4().hex[:12]}:"
    try:
        yield prefix
    finally:
        client = redis.Redis.from_url(url)
        queue = prefix.replace(":", "-")  # Settings.job_queue_name: the SAQ queue's namespace
        try:
            for pattern in (f"{prefix}*", f"saq:{queue}*", f"saq:job:{queue}*"):
                batch = list(client.scan_iter(match=pattern, count=1000))
                for start in range(0, len(batch), 1000):
                    client.delete(*batch[start : start + 1000])
        finally:
            client.close()
