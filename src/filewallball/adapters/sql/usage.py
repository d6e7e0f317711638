"""SqlUsageRepository: what each owner stores, and the totals, summed from the `files` table."""

from __future__ import annotations

import sqlalchemy as sa

from filewallball.adapters.sql.store import SqlStore, Transaction, storable
from filewallball.adapters.sql.tables import files
from filewallball.domain.ports import StorageTotals, UsageRepository


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
