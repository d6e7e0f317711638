"""Alembic environment: migrate the database at config.attributes["url"] on an async engine.

`upgrade()` in adapters/sql/schema.py builds the config in code (there is no alembic.ini) and may
be called from a worker thread, so this runs its own event loop with asyncio.run.
"""

from __future__ import annotations

import asyncio

import sqlalchemy as sa
from alembic import context

from filewallball.adapters.sql import create_engine, metadata

# Any constant works, as long as every FileWallBall process uses the same one.
_PG_MIGRATION_LOCK = 0x46574242  # "FWBB"


def _migrate(connection: sa.Connection) -> None:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Pods starting together must not run the same migration twice; the lock is held
            # until this transaction commits (SQLite is locked by a file in upgrade()).
            connection.execute(sa.text(f"SELECT pg_advisory_xact_lock({_PG_MIGRATION_LOCK})"))
        context.run_migrations()


async def _run(url: str) -> None:
    # No command timeout: building an index on a large table may take a while.
    engine = create_engine(url, command_timeout=None)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_migrate)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported")
asyncio.run(_run(context.config.attributes["url"]))
