"""The source's metadata as of one moment, spooled to local JSON Lines files; what files use now."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from filewallball.adapters.sql import (
    DRIVER_ERRORS,
    api_keys,
    audit_log,
    blobs,
    files,
    head_revision,
    ip_rules,
)
from filewallball.adapters.sql.store import database_address, driver_reason
from filewallball.backup.format import TABLES, BackupError
from filewallball.backup.rows import BATCH_ROWS, SQL_TABLES, encode_row

_ORDER = {
    "files": (files.c.id,),
    "api_keys": (api_keys.c.id,),
    "ip_rules": (ip_rules.c.created_at, ip_rules.c.id),
    "audit_log": (audit_log.c.id,),
}


@dataclass
class Snapshot:
    """The metadata as of one moment, spooled to local JSON Lines files."""

    taken_at: datetime
    revision: str
    spools: dict[str, Path]  # table -> its rows
    copy_list: Path  # "<sha256> <size>" per referenced blob, in hash order
    rows: dict[str, int] = field(default_factory=dict)
    blob_bytes: int = 0


async def read_snapshot(engine: AsyncEngine, spool: Path) -> Snapshot:
    """Every table as of one moment, written under `spool`; only the blobs files reference.

    PostgreSQL: one REPEATABLE READ, READ ONLY transaction (what pg_dump uses). SQLite: one
    read transaction (WAL keeps it stable while the service writes).
    """
    snapshot = Snapshot(
        taken_at=datetime.now(UTC),
        revision="",
        spools={table: spool / f"{table}.jsonl" for table in TABLES},
        copy_list=spool / "copy-list.txt",
    )
    try:
        async with engine.connect() as connection:
            if engine.dialect.name == "postgresql":
                await connection.execution_options(
                    isolation_level="REPEATABLE READ", postgresql_readonly=True
                )
            else:
                # pysqlite opens transactions for writes only: ask for this one explicitly.
                await connection.exec_driver_sql("BEGIN")
            snapshot.revision = await _revision(connection)
            if snapshot.revision != head_revision():
                raise BackupError(
                    f"the database is at schema revision {snapshot.revision}, this FileWallBall "
                    f"expects {head_revision()}: run `filewallball migrate` first, or back up with "
                    "the FileWallBall version that matches the database"
                )
            await _spool_blobs(connection, snapshot)
            for table in TABLES[1:]:
                statement = sa.select(SQL_TABLES[table]).order_by(*_ORDER[table])
                snapshot.rows[table] = await _spool(
                    connection, statement, snapshot.spools[table], encode_row
                )
            await connection.rollback()
    except DRIVER_ERRORS as error:
        raise _unreadable(engine, error) from error
    return snapshot


def _unreadable(engine: AsyncEngine, error: BaseException) -> BackupError:
    where = database_address(engine.url)
    return BackupError(f"reading the database failed: database at {where}: {driver_reason(error)}")


async def _revision(connection: AsyncConnection) -> str:
    try:
        found = await connection.execute(sa.text("SELECT version_num FROM alembic_version"))
    except DRIVER_ERRORS:
        raise BackupError("the database has no FileWallBall schema (never migrated)") from None
    revision = found.scalar_one_or_none()
    if not isinstance(revision, str):
        raise BackupError("the database has no FileWallBall schema revision")
    return revision


async def _spool_blobs(connection: AsyncConnection, snapshot: Snapshot) -> None:
    """The blob rows files reference, with refcounts counted from those files (the truth)."""
    statement = (
        sa.select(
            blobs.c.sha256,
            sa.func.count(files.c.id).label("refcount"),
            blobs.c.created_at,
            sa.func.max(files.c.size).label("size"),
        )
        .join(files, files.c.sha256 == blobs.c.sha256)
        .group_by(blobs.c.sha256, blobs.c.created_at)
        .order_by(blobs.c.sha256)
    )
    with snapshot.copy_list.open("w") as copy_list:

        def encode(row: Mapping[str, Any]) -> bytes:
            copy_list.write(f"{row['sha256']} {row['size']}\n")
            snapshot.blob_bytes += int(row["size"])
            return encode_row({k: v for k, v in row.items() if k != "size"})

        snapshot.rows["blobs"] = await _spool(
            connection, statement, snapshot.spools["blobs"], encode
        )


async def _spool(
    connection: AsyncConnection,
    statement: sa.Select[Any],
    path: Path,
    encode: Any,
) -> int:
    """Stream the statement's rows into `path`, a batch per thread hop; how many."""
    count = 0
    result = await connection.stream(statement)
    with path.open("wb") as out:
        async for batch in result.mappings().partitions(BATCH_ROWS):
            lines = b"".join(encode(row) for row in batch)
            await anyio.to_thread.run_sync(out.write, lines)
            count += len(batch)
    return count


async def references(engine: AsyncEngine, sha256: str) -> int:
    """How many files use these bytes now (outside any snapshot)."""
    statement = sa.select(sa.func.count()).select_from(files).where(files.c.sha256 == sha256)
    try:
        async with engine.connect() as connection:
            return int((await connection.execute(statement)).scalar_one())
    except DRIVER_ERRORS as error:
        raise _unreadable(engine, error) from error
