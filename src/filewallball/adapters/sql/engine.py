"""create_engine: an AsyncEngine tuned for PostgreSQL (asyncpg) or SQLite that fails fast."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

CONNECT_TIMEOUT_SECONDS = 5.0
COMMAND_TIMEOUT_SECONDS = 30.0
SQLITE_BUSY_TIMEOUT_MS = 30_000
# A pooled asyncpg connection idle for longer than this is pinged before it is handed out.
IDLE_PING_SECONDS = 1.0
_IDLE_SINCE = "fwb_idle_since"


def create_engine(
    url: str, *, command_timeout: float | None = COMMAND_TIMEOUT_SECONDS, pool_size: int = 10
) -> AsyncEngine:
    """An engine for `url` (sqlite+aiosqlite or postgresql+asyncpg) that fails fast when down."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = sqlite_path(url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url)
        sa.event.listen(engine.sync_engine, "connect", _configure_sqlite)
        return engine
    connect_args: dict[str, Any] = {}
    asyncpg = parsed.get_driver_name() == "asyncpg"
    if asyncpg:
        connect_args["timeout"] = CONNECT_TIMEOUT_SECONDS
        connect_args["command_timeout"] = command_timeout
    # At most twice `pool_size` connections, opened when needed and then kept: overflow
    # connections (closed when returned) had a busy worker opening and closing one every few
    # transactions, and opening one costs more than a dozen uploads' statements.
    engine = create_async_engine(
        url,
        # SQLAlchemy's pre-ping costs three round trips (BEGIN, a query, ROLLBACK) on every
        # checkout, as much as the work of a small transaction: asyncpg connections get the
        # cheaper check of _check_on_checkout instead.
        pool_pre_ping=not asyncpg,
        pool_size=2 * pool_size,
        max_overflow=0,
        connect_args=connect_args,
    )
    if asyncpg:
        _check_on_checkout(engine)
    return engine


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL; None for an in-memory database."""
    database = sa.make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def _check_on_checkout(engine: AsyncEngine) -> None:
    """Replace dead connections when they leave the pool, so the service recovers on its own
    once a restarted database is back.

    A connection whose socket the server closed (a restart, pg_terminate_backend) is known to be
    closed without a round trip; one idle for more than IDLE_PING_SECONDS is also pinged, since
    a busy pool rarely is. What slips through (a connection that died a moment ago and whose
    end the event loop has not seen yet) fails its first statement, which every repository
    (SqlStore._run) retries once on a fresh connection. SQLAlchemy invalidates the whole pool
    on such a disconnect error, as it does when a pre-ping fails.
    """
    dialect = engine.dialect
    pool = engine.sync_engine.pool

    def checkin(_dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info[_IDLE_SINCE] = time.monotonic()

    def checkout(dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: Any) -> None:
        if _known_closed(dbapi_connection):
            raise DisconnectionError("the database closed this connection")
        idle_since = record.info.get(_IDLE_SINCE)
        if idle_since is None or time.monotonic() - idle_since <= IDLE_PING_SECONDS:
            return
        try:
            dialect.do_ping(dbapi_connection)
        except Exception as error:
            # The adapter raises DBAPI errors; whatever it raises, a closed connection is gone.
            if dbapi_connection.driver_connection.is_closed():
                raise DisconnectionError("the database closed this connection") from error
            raise

    sa.event.listen(pool, "checkin", checkin)
    sa.event.listen(pool, "checkout", checkout)


def _known_closed(dbapi_connection: Any) -> bool:
    """Whether asyncpg has seen the connection end (no round trip: it may not have yet)."""
    return bool(dbapi_connection.driver_connection.is_closed())


def _casefold(value: object) -> object:
    return value.casefold() if isinstance(value, str) else value


def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
    """Per connection: wait for locks instead of failing, WAL, foreign keys, casefold()."""
    cursor = dbapi_connection.cursor()
    try:
        # busy_timeout first: switching to WAL itself may have to wait for another connection.
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()
    # For the file name filter (listing.py): SQLite's own lower() folds ASCII only.
    dbapi_connection.create_function("fwb_casefold", 1, _casefold, deterministic=True)
