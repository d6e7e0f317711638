"""The restore target's database: what it holds; the archive's tables in, in one transaction."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import IO, Any

import anyio
import anyio.to_thread
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from filewallball.adapters.sql import DRIVER_ERRORS, api_keys, audit_log, blobs, files, ip_rules
from filewallball.backup.format import TABLES, BackupError
from filewallball.backup.rows import BATCH_ROWS, SQL_TABLES, decode_row, numbered_lines
from filewallball.backup.rules import BOOTSTRAP_AUDIT_ACTION, BOOTSTRAP_KEY_NAME, TargetContents


async def target_contents(engine: AsyncEngine) -> TargetContents:
    try:
        async with engine.connect() as connection:
            return await _contents(connection)
    except DRIVER_ERRORS as error:
        raise BackupError(f"reading the target database failed: {error}") from error


async def _contents(connection: AsyncConnection) -> TargetContents:
    def count(table: sa.Table, *where: sa.ColumnElement[bool]) -> sa.ScalarSelect[int]:
        return sa.select(sa.func.count()).select_from(table).where(*where).scalar_subquery()

    statement = sa.select(
        count(files),
        count(blobs),
        count(ip_rules),
        count(api_keys),
        count(api_keys, api_keys.c.name == BOOTSTRAP_KEY_NAME),
        count(audit_log),
        count(audit_log, audit_log.c.action == BOOTSTRAP_AUDIT_ACTION),
    )
    values = (await connection.execute(statement)).one()
    return TargetContents(*(int(v) for v in values))


async def key_exists(engine: AsyncEngine, key_id: str) -> bool:
    statement = sa.select(sa.func.count()).select_from(api_keys).where(api_keys.c.id == key_id)
    try:
        async with engine.connect() as connection:
            return int((await connection.execute(statement)).scalar_one()) > 0
    except DRIVER_ERRORS as error:
        raise BackupError(f"reading the target database failed: {error}") from error


async def restore_tables(
    engine: AsyncEngine,
    staged: Mapping[str, Path],
    *,
    before_commit: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Insert every staged table into an empty target in one transaction.

    The target is checked again inside the transaction, which holds the write lock from the
    start: nothing can be written between the check and the commit. `before_commit` runs once
    everything is inserted and checked, right before the commit (an error there rolls back).
    """
    postgresql = engine.dialect.name == "postgresql"
    try:
        async with engine.connect() as connection:
            if postgresql:
                names = ", ".join(TABLES)
                await connection.exec_driver_sql(f"LOCK TABLE {names} IN SHARE ROW EXCLUSIVE MODE")
            else:
                await connection.exec_driver_sql("BEGIN IMMEDIATE")
            (await _contents(connection)).check_empty()
            # What a first start created goes: the archive's keys and audit trail replace it.
            await connection.execute(audit_log.delete())
            await connection.execute(api_keys.delete())
            for table in TABLES:
                await _insert(connection, table, staged[table])
            await _check_refcounts(connection)
            if postgresql:
                # audit_log.id is a BIGSERIAL: go on after the restored ids.
                await connection.execute(
                    sa.text(
                        "SELECT setval(pg_get_serial_sequence('audit_log', 'id'), "
                        "COALESCE(MAX(id), 0) + 1, false) FROM audit_log"
                    )
                )
            if before_commit is not None:
                await before_commit()
            await connection.commit()
    except DRIVER_ERRORS as error:
        raise BackupError(f"writing the target database failed: {error}") from error


async def _insert(connection: AsyncConnection, table: str, path: Path) -> None:
    rows = _RowReader(path, table)
    try:
        while batch := await anyio.to_thread.run_sync(rows.batch):
            await connection.execute(SQL_TABLES[table].insert(), batch)
    finally:
        await anyio.to_thread.run_sync(rows.close)


class _RowReader:
    """Decoded rows of a staged table, a batch at a time (blocking: call it in a thread)."""

    def __init__(self, path: Path, table: str) -> None:
        self._handle: IO[bytes] = path.open("rb")
        self._table = table
        self._where = f"tables/{table}.jsonl"
        self._lines = numbered_lines(self._handle, self._where)

    def batch(self) -> list[dict[str, Any]]:
        rows = []
        for number, line in self._lines:
            rows.append(decode_row(self._table, line, where=f"{self._where} line {number}"))
            if len(rows) == BATCH_ROWS:
                break
        return rows

    def close(self) -> None:
        self._handle.close()


async def _check_refcounts(connection: AsyncConnection) -> None:
    used = sa.select(files.c.sha256, sa.func.count().label("n")).group_by(files.c.sha256).subquery()
    statement = (
        sa.select(blobs.c.sha256)
        .select_from(blobs.outerjoin(used, used.c.sha256 == blobs.c.sha256))
        .where(blobs.c.refcount != sa.func.coalesce(used.c.n, 0))
        .limit(1)
    )
    wrong = (await connection.execute(statement)).scalar_one_or_none()
    if wrong is not None:
        raise BackupError(f"tables/blobs.jsonl: the reference count of blob {wrong} is wrong")
