"""SqlUsageRepository: what each owner stores (the `files` table), the totals, and the room
uploads in progress hold in their owner's quota (`quota_reservations`)."""

from __future__ import annotations

import secrets
from datetime import datetime

import sqlalchemy as sa

from filewallball.adapters.sql.store import SqlStore, Transaction, storable, utc
from filewallball.adapters.sql.tables import files, quota_reservations
from filewallball.domain.errors import QuotaExceeded
from filewallball.domain.policies import Quota, Reservation
from filewallball.domain.ports import StorageTotals, UsageRepository

_reservations = quota_reservations


class SqlUsageRepository(SqlStore, UsageRepository):
    """What each owner stores, summed from the `files` table."""

    async def stored_by(self, owner: str) -> tuple[int, int]:
        if not storable(owner):
            return 0, 0
        totals = sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(files.c.size), 0))

        async def work(tx: Transaction) -> tuple[int, int]:
            count, size = (await tx.execute(totals.where(files.c.owner == owner))).one()
            # PostgreSQL sums a BIGINT column as NUMERIC (a Decimal).
            return int(count), int(size)

        return await self._run(work)

    async def reserve(
        self, owner: str, quota: Quota, *, size: int | None, now: datetime, until: datetime
    ) -> Reservation:
        """One conditional INSERT ... SELECT: the check and the reservation are one statement.

        PostgreSQL first takes a transaction-scoped advisory lock on the owner, so concurrent
        reservations of one owner run one after the other (another owner's are not held up);
        SQLite has one writer at a time, and a write statement takes the write lock before it
        reads, so its subqueries see every reservation committed before it.
        """
        if not storable(owner):
            raise QuotaExceeded("this owner cannot store files")
        live = (_reservations.c.owner == owner) & (_reservations.c.expires_at > utc(now))
        stored_files = sa.select(sa.func.count()).where(files.c.owner == owner).scalar_subquery()
        stored_bytes = (
            sa.select(sa.func.coalesce(sa.func.sum(files.c.size), 0))
            .where(files.c.owner == owner)
            .scalar_subquery()
        )
        held_files = (
            sa.select(sa.func.coalesce(sa.func.sum(_reservations.c.files), 0))
            .where(live)
            .scalar_subquery()
        )
        held_bytes = (
            sa.select(sa.func.coalesce(sa.func.sum(_reservations.c.bytes), 0))
            .where(live)
            .scalar_subquery()
        )
        room = (
            sa.literal(quota.bytes, sa.BigInteger) - stored_bytes - held_bytes
            if quota.bytes is not None
            else sa.literal(0, sa.BigInteger)
        )
        amount = sa.literal(size, sa.BigInteger) if size is not None else room
        fits: list[sa.ColumnElement[bool]] = []
        if quota.files is not None:
            fits.append(stored_files + held_files + 1 <= quota.files)
        if quota.bytes is not None:
            fits.append(stored_bytes + held_bytes + amount <= quota.bytes)
            fits.append(amount >= 0)
        reservation_id = secrets.token_hex(16)
        chosen = sa.select(
            sa.literal(reservation_id, sa.String),
            sa.literal(owner, sa.String),
            sa.literal(1, sa.Integer),
            amount,
            sa.literal(utc(until), sa.DateTime(timezone=True)),
        ).where(*fits)
        insert = (
            _reservations.insert()
            .from_select(["id", "owner", "files", "bytes", "expires_at"], chosen)
            .returning(_reservations.c.bytes)
        )

        async def work(tx: Transaction) -> int | None:
            if self._postgresql:
                await tx.execute(
                    sa.select(sa.func.pg_advisory_xact_lock(sa.func.hashtextextended(owner, 0)))
                )
            held: int | None = (await tx.execute(insert)).scalar()
            return held

        held = await self._run(work)
        if held is None:
            stored_count, stored_size = await self.stored_by(owner)
            quota.room(stored_files=stored_count, stored_bytes=stored_size)  # says why, if so
            raise QuotaExceeded(
                "uploads in progress hold the rest of the quota"
                if size is None
                else f"the upload's {size} bytes pass what is left in the quota"
            )
        return Reservation(
            id=reservation_id, owner=owner, bytes=int(held) if quota.bytes is not None else None
        )

    async def release(self, reservation: Reservation) -> None:
        statement = _reservations.delete().where(_reservations.c.id == reservation.id)

        async def work(tx: Transaction) -> None:
            await tx.execute(statement)

        await self._run(work)

    async def drop_expired_reservations(self, *, now: datetime) -> int:
        statement = _reservations.delete().where(_reservations.c.expires_at <= utc(now))

        async def work(tx: Transaction) -> int:
            return int((await tx.execute(statement)).rowcount)

        return await self._run(work)

    async def totals(self) -> StorageTotals:
        logical = sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(files.c.size), 0))
        # Distinct contents: the bytes the blob store really holds (deduplicated).
        distinct = (
            sa.select(files.c.sha256, sa.func.max(files.c.size).label("size"))
            .group_by(files.c.sha256)
            .subquery()
        )
        stored = sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(distinct.c.size), 0))

        async def work(tx: Transaction) -> StorageTotals:
            count, size = (await tx.execute(logical)).one()
            blob_count, blob_bytes = (await tx.execute(stored)).one()
            return StorageTotals(
                files=int(count),
                logical_bytes=int(size),
                blobs=int(blob_count),
                stored_bytes=int(blob_bytes),
            )

        return await self._run(work)
