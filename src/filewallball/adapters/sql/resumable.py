"""SqlResumableRepository: tus uploads in progress (`resumable_uploads`), the segments of their
bytes committed so far (`resumable_segments`), and their write leases."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from filewallball.adapters.sql.store import SqlStore, Transaction, row_limit, utc
from filewallball.adapters.sql.tables import resumable_segments, resumable_uploads
from filewallball.domain.models import FileId, ResumableUpload, Segment, UploadId, Visibility
from filewallball.domain.policies import Reservation
from filewallball.domain.ports import Lock, ResumableRepository

_uploads = resumable_uploads
_segments = resumable_segments


def _to_upload(row: sa.Row[Any]) -> ResumableUpload:
    return ResumableUpload(
        id=UploadId(row.id),
        owner=row.owner,
        length=row.length,
        offset=row.upload_offset,
        filename=row.filename,
        visibility=Visibility(row.visibility),
        expires_in_seconds=row.expires_in_seconds,
        metadata=row.upload_metadata,
        created_at=utc(row.created_at),
        expires_at=utc(row.expires_at),
        reservation_id=row.reservation_id,
        reservation_bytes=row.reservation_bytes,
        file_id=None if row.file_id is None else FileId(row.file_id),
        locked_until=None if row.lock_token is None else utc(row.lock_until),
        concat=row.concat,
    )


def _held(upload_id: str, token: str) -> sa.ColumnElement[bool]:
    return (
        (_uploads.c.id == upload_id)
        & (_uploads.c.lock_token == token)
        & _uploads.c.file_id.is_(None)
    )


class SqlResumableRepository(SqlStore, ResumableRepository):
    """Every change to an upload's bytes is one conditional UPDATE on its row: it commits only
    while the caller's token holds the lease, and only from the offset the caller started at."""

    async def add(self, upload: ResumableUpload) -> None:
        values = {
            "id": upload.id,
            "owner": upload.owner,
            "length": upload.length,
            "upload_offset": upload.offset,
            "filename": upload.filename,
            "visibility": upload.visibility.value,
            "expires_in_seconds": upload.expires_in_seconds,
            "upload_metadata": upload.metadata,
            "created_at": utc(upload.created_at),
            "expires_at": utc(upload.expires_at),
            "reservation_id": upload.reservation_id,
            "reservation_bytes": upload.reservation_bytes,
            "file_id": upload.file_id,
            "concat": upload.concat,
        }

        async def work(tx: Transaction) -> None:
            await tx.execute(_uploads.insert().values(values))

        await self._run(work, conflict="an upload with this id exists")

    async def get(self, upload_id: UploadId) -> ResumableUpload | None:
        async def work(tx: Transaction) -> sa.Row[Any] | None:
            query = sa.select(_uploads).where(_uploads.c.id == upload_id)
            return (await tx.execute(query)).one_or_none()

        row = await self._run(work)
        return None if row is None else _to_upload(row)

    async def count_open(self, owner: str | None, *, now: datetime) -> int:
        mine = _uploads.c.owner.is_(None) if owner is None else _uploads.c.owner == owner
        live = _uploads.c.file_id.is_(None) & (_uploads.c.expires_at > utc(now))
        query = sa.select(sa.func.count()).where(mine & live)

        async def work(tx: Transaction) -> int:
            return int((await tx.execute(query)).scalar_one())

        return await self._run(work)

    async def lock(
        self, upload_id: UploadId, *, token: str, offset: int, now: datetime, until: datetime
    ) -> Lock:
        free = _uploads.c.lock_token.is_(None) | (_uploads.c.lock_until <= utc(now))
        take = (
            _uploads.update()
            .where(
                (_uploads.c.id == upload_id)
                & _uploads.c.file_id.is_(None)
                & (_uploads.c.upload_offset == offset)
                & free
            )
            .values(lock_token=token, lock_until=utc(until))
        )

        async def work(tx: Transaction) -> Lock:
            if (await tx.execute(take)).rowcount == 1:
                return Lock.ACQUIRED
            query = sa.select(_uploads.c.file_id, _uploads.c.lock_token, _uploads.c.lock_until)
            row = (await tx.execute(query.where(_uploads.c.id == upload_id))).one_or_none()
            if row is None or row.file_id is not None:
                return Lock.GONE
            if row.lock_token is not None and utc(row.lock_until) > utc(now):
                return Lock.HELD
            return Lock.MOVED

        return await self._run(work)

    async def renew(self, upload_id: UploadId, *, token: str, until: datetime) -> bool:
        statement = _uploads.update().where(_held(upload_id, token)).values(lock_until=utc(until))

        async def work(tx: Transaction) -> bool:
            return bool((await tx.execute(statement)).rowcount == 1)

        return await self._run(work)

    async def unlock(self, upload_id: UploadId, *, token: str) -> None:
        statement = (
            _uploads.update()
            .where(_held(upload_id, token))
            .values(lock_token=None, lock_until=None)
        )

        async def work(tx: Transaction) -> None:
            await tx.execute(statement)

        await self._run(work)

    async def _advance(
        self,
        tx: Transaction,
        upload_id: str,
        token: str,
        segments: Sequence[Segment],
        **values: Any,
    ) -> bool:
        """Move the offset past `segments` and store them, if the token holds the lock and they
        start at the offset; the caller's transaction commits it (or rolls it back)."""
        condition = _held(upload_id, token)
        if segments:
            end = segments[-1].end
            condition &= _uploads.c.upload_offset == segments[0].start
            values["upload_offset"] = end
        statement = _uploads.update().where(condition).values(**values)
        if (await tx.execute(statement)).rowcount != 1:
            return False
        if segments:
            rows = [
                {"upload_id": upload_id, "start": s.start, "size": s.size, "key": s.key}
                for s in segments
            ]
            await tx.execute(_segments.insert(), rows)
        return True

    async def append(self, upload_id: UploadId, *, token: str, segments: Sequence[Segment]) -> bool:
        async def work(tx: Transaction) -> bool:
            return await self._advance(tx, upload_id, token, segments)

        return await self._run(work)

    async def declare_length(
        self, upload_id: UploadId, *, token: str, length: int, reservation: Reservation | None
    ) -> bool:
        values = {
            "length": length,
            "reservation_id": None if reservation is None else reservation.id,
            "reservation_bytes": None if reservation is None else reservation.bytes,
        }
        statement = (
            _uploads.update()
            .where(_held(upload_id, token) & _uploads.c.length.is_(None))
            .values(values)
        )

        async def work(tx: Transaction) -> bool:
            return bool((await tx.execute(statement)).rowcount == 1)

        return await self._run(work)

    async def segments(self, upload_id: UploadId) -> list[Segment]:
        query = (
            sa.select(_segments.c.start, _segments.c.size, _segments.c.key)
            .where(_segments.c.upload_id == upload_id)
            .order_by(_segments.c.start)
        )

        async def work(tx: Transaction) -> list[Segment]:
            return [Segment(row.start, row.size, row.key) for row in await tx.execute(query)]

        return await self._run(work)

    async def complete(
        self, upload_id: UploadId, *, token: str, segments: Sequence[Segment], file_id: FileId
    ) -> bool:
        done = {
            "file_id": str(file_id),
            "lock_token": None,
            "lock_until": None,
            "reservation_id": None,
            "reservation_bytes": None,
        }

        async def work(tx: Transaction) -> bool:
            if not await self._advance(tx, upload_id, token, segments, **done):
                return False
            await tx.execute(_segments.delete().where(_segments.c.upload_id == upload_id))
            return True

        return await self._run(work)

    async def remove(self, upload_id: UploadId) -> ResumableUpload | None:
        async def work(tx: Transaction) -> sa.Row[Any] | None:
            await tx.execute(_segments.delete().where(_segments.c.upload_id == upload_id))
            deleted = _uploads.delete().where(_uploads.c.id == upload_id).returning(*_uploads.c)
            return (await tx.execute(deleted)).one_or_none()

        row = await self._run(work)
        return None if row is None else _to_upload(row)

    async def expired(self, *, now: datetime, limit: int) -> list[ResumableUpload]:
        query = (
            sa.select(_uploads)
            .where(_uploads.c.expires_at <= utc(now))
            .order_by(_uploads.c.expires_at)
            .limit(row_limit(limit))
        )

        async def work(tx: Transaction) -> list[ResumableUpload]:
            return [_to_upload(row) for row in await tx.execute(query)]

        return await self._run(work)
