"""SqlFileRepository: file records and blob reference counts, in the `files` and `blobs` tables."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from filewallball.adapters.sql.listing import select_page, sort_value
from filewallball.adapters.sql.schema import head_revision, older_revisions
from filewallball.adapters.sql.store import SqlStore, SqlUnitOfWork, Transaction, utc
from filewallball.adapters.sql.tables import blobs, files
from filewallball.domain.errors import DependencyUnavailable
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
    ThumbnailStatus,
    Visibility,
)
from filewallball.domain.ports import FileRepository, FileUnitOfWork


class SqlFileRepository(SqlStore, FileRepository):
    """File records and blob reference counts in SQL; driver failures are DependencyUnavailable."""

    def unit_of_work(self) -> SqlFileUnitOfWork:
        return SqlFileUnitOfWork(self._engine, postgresql=self._postgresql)

    async def get(self, file_id: FileId) -> FileRecord | None:
        async def work(tx: Transaction) -> sa.Row[Any] | None:
            return (await tx.execute(_GET_FILE, {"id": str(file_id)})).one_or_none()

        row = await self._run(work)
        return None if row is None else _to_record(row)

    async def remove(self, file_id: FileId) -> FileRecord | None:
        async def work(tx: Transaction) -> sa.Row[Any] | None:
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

    async def expect_blob(self, sha256: Sha256, *, at: datetime) -> None:
        values = {"sha256": str(sha256), "refcount": 0, "created_at": utc(at)}
        if self._postgresql:
            statement: sa.Executable = (
                postgresql.insert(blobs).values(values).on_conflict_do_nothing()
            )
        else:
            statement = sqlite.insert(blobs).values(values).on_conflict_do_nothing()

        async def work(tx: Transaction) -> None:
            await tx.execute(statement)

        await self._run(work)

    async def unreferenced_blobs(self) -> list[Sha256]:
        query = sa.select(blobs.c.sha256).where(blobs.c.refcount == 0).order_by(blobs.c.sha256)

        async def work(tx: Transaction) -> list[Sha256]:
            return [Sha256(sha) for sha in (await tx.execute(query)).scalars()]

        return await self._run(work)

    async def list(self, query: ListQuery) -> Page[FileRecord]:
        statement = select_page(query, on_postgresql=self._postgresql)
        if statement is None:
            return Page(items=[])

        async def work(tx: Transaction) -> Sequence[sa.Row[Any]]:
            return (await tx.execute(statement)).all()

        rows = await self._run(work)
        items = [_to_record(row) for row in rows[: query.limit]]
        next_cursor = None
        if len(rows) > query.limit:
            last = items[-1]
            next_cursor = Cursor(query.sort, sort_value(last, query.sort), last.id)
        return Page(items=items, next_cursor=next_cursor)

    async def trash(self, file_id: FileId, *, at: datetime) -> FileRecord | None:
        statement = (
            files.update()
            .where(files.c.id == file_id, files.c.deleted_at.is_(None))
            .values(deleted_at=utc(at))
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
        expired = files.c.expires_at.is_not(None) & (files.c.expires_at <= utc(now))
        purged = files.c.deleted_at.is_not(None) & (files.c.deleted_at <= utc(trashed_before))
        query = sa.select(files.c.id).where(expired | purged).limit(limit)

        async def work(tx: Transaction) -> tuple[FileId, ...]:
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

        async def work(tx: Transaction) -> tuple[Sha256, ...]:
            return tuple(Sha256(sha) for sha in (await tx.execute(query)).scalars())

        return await self._run(work)

    async def set_thumbnail_status(self, file_id: FileId, status: ThumbnailStatus) -> None:
        statement = (
            files.update().where(files.c.id == file_id).values(thumbnail_status=status.value)
        )

        async def work(tx: Transaction) -> None:
            await tx.execute(statement)

        await self._run(work)

    async def ping(self) -> None:
        """The database answers and its schema is not older than this version needs.

        A revision this code does not know is newer (a rolling upgrade migrated first): the
        migrations add before they remove, so the older code keeps working and stays ready.
        """

        async def work(tx: Transaction) -> str | None:
            has_versions = await tx.run_sync(
                lambda sync: sa.inspect(sync).has_table("alembic_version")
            )
            if not has_versions:
                return None
            query = sa.text("SELECT version_num FROM alembic_version")
            revision: str | None = (await tx.execute(query)).scalar()
            return revision

        revision = await self._run(work)
        if revision is None or revision in older_revisions():
            raise DependencyUnavailable(
                "database",
                f"the database schema is at revision {revision or 'none (empty database)'},"
                f" this version needs {head_revision()}: run `filewallball migrate`",
            )

    async def _one_record(self, statement: sa.Executable) -> FileRecord | None:
        async def work(tx: Transaction) -> sa.Row[Any] | None:
            return (await tx.execute(statement)).one_or_none()

        row = await self._run(work)
        return None if row is None else _to_record(row)


class SqlFileUnitOfWork(SqlUnitOfWork, FileUnitOfWork):
    """A record and its blob reference, or a blob row's removal, committed with the bytes."""

    def __init__(self, engine: AsyncEngine, *, postgresql: bool) -> None:
        super().__init__(engine)
        self._postgresql = postgresql

    async def add(self, record: FileRecord) -> None:
        row = _to_row(record)

        async def work(tx: Transaction) -> None:
            # The reference first: that takes the blob row's lock (PostgreSQL) or the database's
            # write lock (SQLite), so a collection of this content waits for our commit. The
            # record stays invisible until then, after the caller has stored the bytes.
            if self._postgresql:
                # One statement, one round trip: the reference and the record.
                await tx.execute_driver(_ADD_POSTGRESQL, _add_parameters(row))
            else:
                await tx.execute(_reference(record.sha256, row["created_at"]))
                await tx.execute(_INSERT_FILE, row)

        await self._run(work)

    async def forget_blob(self, sha256: Sha256) -> bool:
        async def work(tx: Transaction) -> bool:
            # Deleting locks the row, so an `add` of the same content waits until the bytes
            # are gone and then writes them again, instead of referencing bytes being deleted.
            unreferenced = (blobs.c.sha256 == sha256) & (blobs.c.refcount == 0)
            return bool((await tx.execute(blobs.delete().where(unreferenced))).rowcount)

        return await self._run(work)


def _reference(sha256: Sha256, created_at: datetime) -> sa.Executable:
    """Insert the blob row with one reference, or add one to an existing row (SQLite)."""
    values = {"sha256": str(sha256), "refcount": 1, "created_at": created_at}
    lite = sqlite.insert(blobs).values(values)
    return lite.on_conflict_do_update(
        index_elements=[blobs.c.sha256], set_={"refcount": blobs.c.refcount + 1}
    )


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


def _to_row(record: FileRecord) -> dict[str, Any]:
    return {
        "id": str(record.id),
        "filename": str(record.filename),
        "size": int(record.size),
        "content_type": str(record.content_type),
        "sha256": str(record.sha256),
        "created_at": utc(record.created_at),
        "visibility": record.visibility.value,
        "owner": record.owner,
        "scan_status": record.scan_status.value,
        "thumbnail_status": record.thumbnail_status.value,
        "expires_at": utc(record.expires_at) if record.expires_at else None,
        "deleted_at": utc(record.deleted_at) if record.deleted_at else None,
    }


def _to_record(row: sa.Row[Any]) -> FileRecord:
    return FileRecord(
        id=FileId(row.id),
        filename=Filename(row.filename),
        size=ByteSize(row.size),
        content_type=ContentType(row.content_type),
        sha256=Sha256(row.sha256),
        created_at=utc(row.created_at),
        visibility=Visibility(row.visibility),
        owner=row.owner,
        scan_status=ScanStatus(row.scan_status),
        thumbnail_status=ThumbnailStatus(row.thumbnail_status),
        expires_at=utc(row.expires_at) if row.expires_at else None,
        deleted_at=utc(row.deleted_at) if row.deleted_at else None,
    )
