"""The SQL side of backups: a consistent snapshot out as JSON Lines, and one transaction back in.

Rows travel as JSON objects keyed by column name, with portable values only: strings, integers,
null, and date-times as ISO 8601 in UTC. They are checked against the table definitions on the
way back, so an archive written on SQLite restores onto PostgreSQL and the other way round.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

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
    utc,
)
from filewallball.backup.format import (
    BOOTSTRAP_AUDIT_ACTION,
    BOOTSTRAP_KEY_NAME,
    TABLES,
    BackupError,
    TargetContents,
    is_sha256,
)

BATCH_ROWS = 1000
# No row comes near this (names, notes and details are short): a longer line is refused before
# it is held in memory whole.
MAX_LINE_BYTES = 1024 * 1024
_MIN_BIGINT, _MAX_BIGINT = -(2**63), 2**63 - 1
_SQL_TABLES: dict[str, sa.Table] = {
    "blobs": blobs,
    "files": files,
    "api_keys": api_keys,
    "ip_rules": ip_rules,
    "audit_log": audit_log,
}
assert tuple(_SQL_TABLES) == TABLES
_ORDER = {
    "files": (files.c.id,),
    "api_keys": (api_keys.c.id,),
    "ip_rules": (ip_rules.c.created_at, ip_rules.c.id),
    "audit_log": (audit_log.c.id,),
}


def numbered_lines(handle: IO[bytes], where: str) -> Iterator[tuple[int, bytes]]:
    """The lines of a JSON Lines file, numbered from 1; BackupError for an overlong one."""
    number = 0
    while line := handle.readline(MAX_LINE_BYTES + 1):
        number += 1
        if len(line) > MAX_LINE_BYTES:
            raise BackupError(f"{where} line {number}: longer than {MAX_LINE_BYTES} bytes")
        yield number, line


def primary_key(table: str) -> str:
    """The column that identifies a row of `table` (every backed-up table has one)."""
    [column] = _SQL_TABLES[table].primary_key.columns
    return column.name


def encode_row(row: Mapping[str, Any]) -> bytes:
    """One JSON line; date-times in UTC ISO 8601."""
    portable = {
        name: utc(value).isoformat() if isinstance(value, datetime) else value
        for name, value in row.items()
    }
    return json.dumps(portable, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def decode_row(table: str, line: bytes, *, where: str) -> dict[str, Any]:
    """A row of `table` ready to insert; BackupError naming `where` when it does not fit.

    A nullable column a row lacks is null; a non-nullable one missing, an unknown column or a
    value of the wrong type is an error. (Only archives of this version's schema revision get
    here: check_revision refuses the others.)
    """
    try:
        data = json.loads(line)
    except (UnicodeDecodeError, ValueError) as error:
        raise BackupError(f"{where}: not a JSON line ({error})") from None
    if not isinstance(data, dict):
        raise BackupError(f"{where}: not a JSON object")
    columns = _SQL_TABLES[table].c
    unknown = set(data) - set(columns.keys())
    if unknown:
        raise BackupError(f"{where}: unknown column(s) {', '.join(sorted(unknown))}")
    return {column.name: _value(column, data.get(column.name), where) for column in columns}


def _value(column: sa.Column[Any], value: object, where: str) -> object:
    name = f"{where}: {column.name}"
    if value is None:
        if not column.nullable:
            raise BackupError(f"{name} is missing")
        return None
    kind = column.type
    if isinstance(kind, sa.DateTime):
        if isinstance(value, str):
            try:
                moment = datetime.fromisoformat(value)
            except ValueError:
                pass
            else:
                if moment.tzinfo is not None:
                    return moment.astimezone(UTC)
        raise BackupError(f"{name} is not an ISO 8601 date-time with a zone")
    if isinstance(kind, sa.Integer):
        if (
            isinstance(value, int)
            and not isinstance(value, bool)
            and _MIN_BIGINT <= value <= _MAX_BIGINT
        ):
            return value
        raise BackupError(f"{name} is not a 64-bit integer")
    if isinstance(kind, sa.String):
        if not isinstance(value, str):
            raise BackupError(f"{name} is not a string")
        try:
            value.encode()
        except UnicodeEncodeError:
            raise BackupError(f"{name} is not valid Unicode") from None
        if "\x00" in value:
            raise BackupError(f"{name} contains a NUL character")
        if kind.length is not None and len(value) > kind.length:
            raise BackupError(f"{name} is longer than {kind.length} characters")
        if column.name == "sha256" and not is_sha256(value):
            raise BackupError(f"{name} is not a SHA-256")
        return value
    raise AssertionError(f"no codec for the column type {kind!r}")  # pragma: no cover


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
                statement = sa.select(_SQL_TABLES[table]).order_by(*_ORDER[table])
                snapshot.rows[table] = await _spool(
                    connection, statement, snapshot.spools[table], encode_row
                )
            await connection.rollback()
    except DRIVER_ERRORS as error:
        raise BackupError(f"reading the database failed: {error}") from error
    return snapshot


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
        raise BackupError(f"reading the database failed: {error}") from error


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


def audit_row(action: str, *, target: str, detail: str, size: int | None = None) -> dict[str, Any]:
    """An audit entry of the backup tool itself (actor "backup", like Principal.system)."""
    return {
        "at": datetime.now(UTC),
        "action": action,
        "outcome": "success",
        "actor": "backup",
        "target": target[:255],
        "detail": detail,
        "bytes": size,
    }


async def record_audit(engine: AsyncEngine, row: Mapping[str, Any]) -> None:
    """Written at once, in its own transaction: the CLI has no background flushing."""
    try:
        async with engine.begin() as connection:
            await connection.execute(audit_log.insert().values(**row))
    except DRIVER_ERRORS as error:
        raise BackupError(f"writing the audit entry failed: {error}") from error


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
    audit: Mapping[str, Any],
    before_commit: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Insert every staged table into an empty target in one transaction, then `audit`.

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
            await connection.execute(audit_log.insert().values(**audit))
            if before_commit is not None:
                await before_commit()
            await connection.commit()
    except DRIVER_ERRORS as error:
        raise BackupError(f"writing the target database failed: {error}") from error


async def _insert(connection: AsyncConnection, table: str, path: Path) -> None:
    rows = _RowReader(path, table)
    try:
        while batch := await anyio.to_thread.run_sync(rows.batch):
            await connection.execute(_SQL_TABLES[table].insert(), batch)
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
