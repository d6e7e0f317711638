"""SQL adapter: file records and blob reference counts on PostgreSQL (asyncpg) or SQLite."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, DisconnectionError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

from filewallball.domain.errors import DependencyUnavailable, InvalidRequest
from filewallball.domain.models import (
    ByteSize,
    ContentType,
    Cursor,
    FileId,
    Filename,
    FileRecord,
    ListQuery,
    Page,
    ScanStatus,
    Sha256,
    SortKey,
    ThumbnailStatus,
    Visibility,
)
from filewallball.domain.ports import FileRepository

MIGRATIONS = Path(__file__).with_name("migrations")
CONNECT_TIMEOUT_SECONDS = 5.0
COMMAND_TIMEOUT_SECONDS = 30.0
SQLITE_BUSY_TIMEOUT_MS = 30_000
# A pooled asyncpg connection idle for longer than this is pinged before it is handed out.
IDLE_PING_SECONDS = 1.0
_IDLE_SINCE = "fwb_idle_since"

_T = TypeVar("_T")

# asyncio.TimeoutError is TimeoutError (an OSError) since Python 3.11.
_DRIVER_ERRORS = (SQLAlchemyError, OSError, TimeoutError)
_LIKE_ESCAPE = "\\"
# Alembic keeps the running migration's context in module globals: one upgrade per process.
_UPGRADE_IN_PROCESS = threading.Lock()

metadata = sa.MetaData()

# Mirrors migrations/versions; the migrations, not this metadata, create the schema.
# Ids and filenames use the "C" collation on PostgreSQL so they sort bytewise, like SQLite and
# Python strings: a cursor then means the same position whatever the database's locale.
files = sa.Table(
    "files",
    metadata,
    sa.Column(
        "id",
        sa.String(32).with_variant(postgresql.VARCHAR(32, collation="C"), "postgresql"),
        primary_key=True,
    ),
    sa.Column(
        "filename",
        sa.Text().with_variant(postgresql.TEXT(collation="C"), "postgresql"),
        nullable=False,
    ),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("content_type", sa.String(255), nullable=False),
    sa.Column("sha256", sa.String(64), sa.ForeignKey("blobs.sha256"), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("visibility", sa.String(16), nullable=False),
    sa.Column("owner", sa.String(128), nullable=True),
    sa.Column("scan_status", sa.String(16), nullable=False),
    sa.Column("thumbnail_status", sa.String(16), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
    sa.Index("ix_files_sha256", "sha256"),
    sa.Index("ix_files_created_at_id", "created_at", "id"),
    sa.Index("ix_files_size_id", "size", "id"),
    sa.Index("ix_files_filename_id", "filename", "id"),
    sa.Index("ix_files_content_type", "content_type"),
    sa.Index("ix_files_expires_at", "expires_at"),
    sa.Index("ix_files_deleted_at", "deleted_at"),
    sa.Index("ix_files_owner", "owner"),  # from 0002_security
)

blobs = sa.Table(
    "blobs",
    metadata,
    sa.Column("sha256", sa.String(64), primary_key=True),
    sa.Column("refcount", sa.Integer, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("refcount >= 0", name="ck_blobs_refcount_non_negative"),
)


def create_engine(
    url: str, *, command_timeout: float | None = COMMAND_TIMEOUT_SECONDS, pool_size: int = 10
) -> AsyncEngine:
    """An engine for `url` (sqlite+aiosqlite or postgresql+asyncpg) that fails fast when down."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = _sqlite_path(url)
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


def _check_on_checkout(engine: AsyncEngine) -> None:
    """Replace dead connections when they leave the pool, so the service recovers on its own
    once a restarted database is back.

    A connection whose socket the server closed (a restart, pg_terminate_backend) is known to be
    closed without a round trip; one idle for more than IDLE_PING_SECONDS is also pinged, since
    a busy pool rarely is. What slips through (a connection that died a moment ago and whose
    end the event loop has not seen yet) fails its first statement, which SqlFileRepository
    retries once on a fresh connection. SQLAlchemy invalidates the whole pool on such a
    disconnect error, as it does when a pre-ping fails.
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


@functools.cache
def head_revision() -> str:
    """The latest migration's revision: the schema this version of the code expects."""
    head = ScriptDirectory(str(MIGRATIONS)).get_current_head()
    if head is None:
        raise RuntimeError("no migrations found")
    return head


@functools.cache
def _older_revisions() -> frozenset[str]:
    scripts = ScriptDirectory(str(MIGRATIONS))
    return frozenset(
        script.revision for script in scripts.walk_revisions() if script.revision != head_revision()
    )


def upgrade(url: str) -> None:
    """Migrate the database at `url` to the latest schema. Blocking: run it off the event loop."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["url"] = url  # not a main option: ConfigParser would mangle "%" in it
    with _UPGRADE_IN_PROCESS, _migration_lock(url):
        command.upgrade(config, "head")


class SqlFileRepository(FileRepository):
    """File records and blob reference counts in SQL; driver failures are DependencyUnavailable."""

    def __init__(self, engine: AsyncEngine) -> None:
        if engine.dialect.name not in ("postgresql", "sqlite"):
            raise ValueError(f"unsupported database: {engine.dialect.name}")
        self._engine = engine
        self._postgresql = engine.dialect.name == "postgresql"

    async def add(self, record: FileRecord, *, publish: Callable[[], Awaitable[None]]) -> None:
        row = _to_row(record)

        async def work(tx: _Transaction) -> None:
            # The reference first: that takes the blob row's lock (PostgreSQL) or the database's
            # write lock (SQLite), so a collect_blob of this content waits for us. The record
            # stays invisible until the commit, after `publish` has stored the bytes.
            if self._postgresql:
                # One statement, one round trip: the reference and the record.
                await tx.execute_driver(_ADD_POSTGRESQL, _add_parameters(row))
            else:
                await tx.execute(self._reference(record.sha256, row["created_at"]))
                await tx.execute(_INSERT_FILE, row)
            await tx.call(publish)

        await self._run(work)

    async def get(self, file_id: FileId) -> FileRecord | None:
        async def work(tx: _Transaction) -> sa.Row[Any] | None:
            return (await tx.execute(_GET_FILE, {"id": str(file_id)})).one_or_none()

        row = await self._run(work)
        return None if row is None else _to_record(row)

    async def remove(self, file_id: FileId) -> FileRecord | None:
        async def work(tx: _Transaction) -> sa.Row[Any] | None:
            deleted = files.delete().where(files.c.id == file_id).returning(*files.c)
            row = (await tx.execute(deleted)).one_or_none()
            if row is None:
                return None
            # The blob row stays at zero: collect_blob deletes it together with the bytes.
            release = blobs.update().where(blobs.c.sha256 == row.sha256)
            await tx.execute(release.values(refcount=blobs.c.refcount - 1))
            return row

        row = await self._run(work)
        return None if row is None else _to_record(row)

    async def collect_blob(self, sha256: Sha256, *, delete: Callable[[], Awaitable[None]]) -> bool:
        async def work(tx: _Transaction) -> bool:
            # Deleting first locks the row, so an `add` of the same content waits until the bytes
            # are gone and then writes them again, instead of referencing bytes being deleted.
            unreferenced = (blobs.c.sha256 == sha256) & (blobs.c.refcount == 0)
            if (await tx.execute(blobs.delete().where(unreferenced))).rowcount == 0:
                return False
            await tx.call(delete)
            return True

        return await self._run(work)

    async def unreferenced_blobs(self) -> list[Sha256]:
        query = sa.select(blobs.c.sha256).where(blobs.c.refcount == 0).order_by(blobs.c.sha256)

        async def work(tx: _Transaction) -> list[Sha256]:
            return [Sha256(sha) for sha in (await tx.execute(query)).scalars()]

        return await self._run(work)

    async def list(self, query: ListQuery) -> Page[FileRecord]:
        statement = _select(query, on_postgresql=self._postgresql)
        if statement is None:
            return Page(items=[])

        async def work(tx: _Transaction) -> Sequence[sa.Row[Any]]:
            return (await tx.execute(statement)).all()

        rows = await self._run(work)
        items = [_to_record(row) for row in rows[: query.limit]]
        next_cursor = None
        if len(rows) > query.limit:
            last = items[-1]
            next_cursor = Cursor(query.sort, _sort_value(last, query.sort), last.id)
        return Page(items=items, next_cursor=next_cursor)

    async def trash(self, file_id: FileId, *, at: datetime) -> FileRecord | None:
        statement = (
            files.update()
            .where(files.c.id == file_id, files.c.deleted_at.is_(None))
            .values(deleted_at=_utc(at))
            .returning(*files.c)
        )
        return await self._one_record(statement)

    async def restore(self, file_id: FileId) -> FileRecord | None:
        statement = (
            files.update()
            .where(files.c.id == file_id, files.c.deleted_at.is_not(None))
            .values(deleted_at=None)
            .returning(*files.c)
        )
        return await self._one_record(statement)

    async def due_for_removal(
        self, *, now: datetime, trashed_before: datetime, limit: int
    ) -> tuple[FileId, ...]:
        expired = files.c.expires_at.is_not(None) & (files.c.expires_at <= _utc(now))
        purged = files.c.deleted_at.is_not(None) & (files.c.deleted_at <= _utc(trashed_before))
        query = sa.select(files.c.id).where(expired | purged).limit(limit)

        async def work(tx: _Transaction) -> tuple[FileId, ...]:
            return tuple(FileId(i) for i in (await tx.execute(query)).scalars())

        return await self._run(work)

    async def referenced_blobs(self, *, after: Sha256 | None, limit: int) -> tuple[Sha256, ...]:
        query = (
            sa.select(blobs.c.sha256)
            .where(blobs.c.refcount > 0)
            .order_by(blobs.c.sha256)
            .limit(limit)
        )
        if after is not None:
            query = query.where(blobs.c.sha256 > str(after))

        async def work(tx: _Transaction) -> tuple[Sha256, ...]:
            return tuple(Sha256(sha) for sha in (await tx.execute(query)).scalars())

        return await self._run(work)

    async def set_thumbnail_status(self, file_id: FileId, status: ThumbnailStatus) -> None:
        statement = (
            files.update().where(files.c.id == file_id).values(thumbnail_status=status.value)
        )

        async def work(tx: _Transaction) -> None:
            await tx.execute(statement)

        await self._run(work)

    async def ping(self) -> None:
        """The database answers and its schema is not older than this version needs.

        A revision this code does not know is newer (a rolling upgrade migrated first): the
        migrations add before they remove, so the older code keeps working and stays ready.
        """

        async def work(tx: _Transaction) -> str | None:
            has_versions = await tx.run_sync(
                lambda sync: sa.inspect(sync).has_table("alembic_version")
            )
            if not has_versions:
                return None
            query = sa.text("SELECT version_num FROM alembic_version")
            revision: str | None = (await tx.execute(query)).scalar()
            return revision

        revision = await self._run(work)
        if revision is None or revision in _older_revisions():
            raise DependencyUnavailable(
                "database",
                f"the database schema is at revision {revision or 'none (empty database)'},"
                f" this version needs {head_revision()}: run `filewallball migrate`",
            )

    async def _one_record(self, statement: sa.Executable) -> FileRecord | None:
        async def work(tx: _Transaction) -> sa.Row[Any] | None:
            return (await tx.execute(statement)).one_or_none()

        row = await self._run(work)
        return None if row is None else _to_record(row)

    def _reference(self, sha256: Sha256, created_at: datetime) -> sa.Executable:
        """Insert the blob row with one reference, or add one to an existing row (SQLite)."""
        values = {"sha256": str(sha256), "refcount": 1, "created_at": created_at}
        lite = sqlite.insert(blobs).values(values)
        return lite.on_conflict_do_update(
            index_elements=[blobs.c.sha256], set_={"refcount": blobs.c.refcount + 1}
        )

    async def _run(self, work: Callable[[_Transaction], Awaitable[_T]]) -> _T:
        """`work` in one committed transaction; driver failures become DependencyUnavailable.

        When the first statement finds its pooled connection dead (the database restarted or
        dropped it, and the pool could not tell), nothing was done yet: `work` runs once more,
        on a fresh connection.
        """
        for attempt in (1, 2):
            tx: _Transaction | None = None
            try:
                async with self._engine.begin() as connection:
                    tx = _Transaction(connection)
                    return await work(tx)
            except _DRIVER_ERRORS as error:
                if tx is not None and error is tx.callback_error:
                    raise
                if attempt == 1 and tx is not None and error is tx.stale_error:
                    continue
                raise DependencyUnavailable("database") from error
        raise AssertionError("unreachable")  # pragma: no cover


@dataclass
class _Transaction:
    connection: AsyncConnection
    callback_error: BaseException | None = None
    # The error of the first statement when it found the connection dead: safe to retry.
    stale_error: DBAPIError | None = None
    _started: bool = False

    async def execute(
        self, statement: sa.Executable, parameters: dict[str, Any] | None = None
    ) -> sa.CursorResult[Any]:
        with self._first_statement():
            return await self.connection.execute(statement, parameters)

    async def execute_driver(
        self, statement: str, parameters: tuple[Any, ...]
    ) -> sa.CursorResult[Any]:
        """A statement in the driver's own syntax: no compiling, no cache key (hot paths)."""
        with self._first_statement():
            return await self.connection.exec_driver_sql(statement, parameters)

    async def run_sync(self, function: Callable[[sa.Connection], _T]) -> _T:
        with self._first_statement():
            return await self.connection.run_sync(function)

    @contextlib.contextmanager
    def _first_statement(self) -> Iterator[None]:
        first, self._started = not self._started, True
        try:
            yield
        except DBAPIError as error:
            if first and error.connection_invalidated:
                self.stale_error = error
            raise

    async def call(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Run the caller's callback; what it raises reaches the caller unchanged (and rolls back)."""
        self._started = True
        try:
            await callback()
        except BaseException as error:
            self.callback_error = error
            raise


# The blob reference and the record in one statement (the data-modifying CTE always runs).
# The record's foreign key is checked at the end of the statement, when the blob row exists.
_ADD_POSTGRESQL = """\
WITH blob AS (
    INSERT INTO blobs (sha256, refcount, created_at) VALUES ($5, 1, $6)
    ON CONFLICT (sha256) DO UPDATE SET refcount = blobs.refcount + 1
    RETURNING sha256
)
INSERT INTO files (
    id, filename, size, content_type, sha256, created_at, visibility, owner, scan_status,
    thumbnail_status, expires_at, deleted_at
)
VALUES ($1, $2, $3, $4, (SELECT sha256 FROM blob), $6, $7, $8, $9, $10, $11, $12)"""
_ADD_COLUMNS = (
    "id",
    "filename",
    "size",
    "content_type",
    "sha256",
    "created_at",
    "visibility",
    "owner",
    "scan_status",
    "thumbnail_status",
    "expires_at",
    "deleted_at",
)
# Built once: SQLAlchemy then finds their compiled form by identity, without rebuilding a key.
_INSERT_FILE = files.insert()
_GET_FILE = files.select().where(files.c.id == sa.bindparam("id"))


def _add_parameters(row: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(row[column] for column in _ADD_COLUMNS)


def _select(query: ListQuery, *, on_postgresql: bool) -> sa.Select[Any] | None:
    """The page's statement (one row more than the limit), or None when nothing can match."""
    conditions = _filters(query, on_postgresql=on_postgresql)
    if conditions is None:
        return None
    column, descending = files.c[query.sort.column], query.sort.descending
    if query.cursor is not None:
        key = sa.tuple_(column, files.c.id)
        mark = sa.tuple_(
            sa.literal(_cursor_bound(query.cursor), column.type),
            sa.literal(str(query.cursor.last_id), files.c.id.type),
        )
        conditions.append(key < mark if descending else key > mark)
    order = [c.desc() if descending else c.asc() for c in (column, files.c.id)]
    return sa.select(files).where(*conditions).order_by(*order).limit(query.limit + 1)


def _filters(query: ListQuery, *, on_postgresql: bool) -> list[sa.ColumnElement[bool]] | None:
    """The visibility, type and name conditions; None when no stored file can match them."""
    conditions: list[sa.ColumnElement[bool]] = []
    # Trashed files are listed only when asked for, expired ones never.
    deleted = files.c.deleted_at.is_not(None)
    conditions.append(deleted if query.trash else ~deleted)
    if query.now is not None:
        conditions.append(
            sa.or_(files.c.expires_at.is_(None), files.c.expires_at > _utc(query.now))
        )
    if query.owner is not None:
        conditions.append(files.c.owner == query.owner)
    if query.visible_to is not None:
        public = files.c.visibility == Visibility.PUBLIC.value
        conditions.append(sa.or_(files.c.owner == query.visible_to, public))
    if query.content_type is not None:
        pattern = query.content_type.strip().lower()
        if not _storable(pattern):
            return None
        if pattern.endswith("/*") and pattern != "*/*":
            prefix = pattern[:-1]
            conditions.append(files.c.content_type.startswith(prefix, autoescape=True))
        elif pattern != "*/*":
            conditions.append(files.c.content_type == pattern)
    if query.name_contains is not None:
        if not _storable(query.name_contains):
            return None
        like = _fold(sa.literal("%" + _escape_like(query.name_contains) + "%"), on_postgresql)
        conditions.append(_fold(files.c.filename, on_postgresql).like(like, escape=_LIKE_ESCAPE))
    return conditions


def _fold(text: sa.ColumnElement[Any], on_postgresql: bool) -> sa.ColumnElement[str]:
    """`text` case-folded beyond ASCII (SQLite's own lower() only folds ASCII)."""
    if on_postgresql:
        # Under the column's "C" collation lower() would fold ASCII only.
        return sa.func.lower(text.collate("default"))
    return sa.func.fwb_casefold(text, type_=sa.Text)


def _to_row(record: FileRecord) -> dict[str, Any]:
    return {
        "id": str(record.id),
        "filename": str(record.filename),
        "size": int(record.size),
        "content_type": str(record.content_type),
        "sha256": str(record.sha256),
        "created_at": _utc(record.created_at),
        "visibility": record.visibility.value,
        "owner": record.owner,
        "scan_status": record.scan_status.value,
        "thumbnail_status": record.thumbnail_status.value,
        "expires_at": _utc(record.expires_at) if record.expires_at else None,
        "deleted_at": _utc(record.deleted_at) if record.deleted_at else None,
    }


def _to_record(row: sa.Row[Any]) -> FileRecord:
    return FileRecord(
        id=FileId(row.id),
        filename=Filename(row.filename),
        size=ByteSize(row.size),
        content_type=ContentType(row.content_type),
        sha256=Sha256(row.sha256),
        created_at=_utc(row.created_at),
        visibility=Visibility(row.visibility),
        owner=row.owner,
        scan_status=ScanStatus(row.scan_status),
        thumbnail_status=ThumbnailStatus(row.thumbnail_status),
        expires_at=_utc(row.expires_at) if row.expires_at else None,
        deleted_at=_utc(row.deleted_at) if row.deleted_at else None,
    )


def _utc(moment: datetime) -> datetime:
    """`moment` in UTC; a naive one already is (SQLite stores UTC and returns naive values)."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _sort_value(record: FileRecord, sort: SortKey) -> str | int:
    """The cursor value of `record`: the same as the in-memory fake's, so cursors agree."""
    if sort.column == "size":
        return int(record.size)
    if sort.column == "filename":
        return str(record.filename)
    return record.created_at.astimezone(UTC).isoformat()


def _cursor_bound(cursor: Cursor) -> int | str | datetime:
    """The cursor's value as its column's type, or InvalidRequest (a cursor can be forged)."""
    value = cursor.value
    if cursor.sort.column == "size":
        if isinstance(value, int) and -(2**63) <= value < 2**63:
            return value
    elif isinstance(value, str) and _storable(value):
        if cursor.sort.column == "filename":
            return value
        with contextlib.suppress(ValueError):
            return _utc(datetime.fromisoformat(value))
    raise InvalidRequest("the cursor is not valid", code="invalid_cursor")


def _storable(text: str) -> bool:
    """Whether a database can take `text` (no NUL, valid UTF-8); stored names always are."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return "\x00" not in text


def _escape_like(text: str) -> str:
    return (
        text.replace(_LIKE_ESCAPE, _LIKE_ESCAPE * 2)
        .replace("%", _LIKE_ESCAPE + "%")
        .replace("_", _LIKE_ESCAPE + "_")
    )


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
    dbapi_connection.create_function("fwb_casefold", 1, _casefold, deterministic=True)


def _sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL; None for an in-memory database."""
    database = sa.make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


@contextlib.contextmanager
def _migration_lock(url: str) -> Iterator[None]:
    """Serialise migrations of one SQLite file across processes and threads.

    PostgreSQL needs no file: env.py takes an advisory lock in the migration's transaction.
    """
    path = _sqlite_path(url) if sa.make_url(url).get_backend_name() == "sqlite" else None
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    # flock, not lockf: flock locks belong to the open file, so threads of one process exclude
    # each other too. The file is never deleted: deleting it would let two holders coexist.
    fd = os.open(f"{path}.migrate-lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
