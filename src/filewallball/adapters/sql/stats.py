"""SqlStatsRepository: upload outcomes and per-client usage, aggregated from the audit log."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa

from filewallball.adapters.sql.store import SqlStore, Transaction
from filewallball.adapters.sql.tables import audit_log
from filewallball.domain.ports import ClientUsage, StatsRepository, UploadStats


class SqlStatsRepository(SqlStore, StatsRepository):
    """Upload and usage statistics, aggregated in SQL from the `audit_log` table."""

    async def uploads(self, *, since: datetime) -> UploadStats:
        query = (
            sa.select(audit_log.c.outcome, audit_log.c.detail, sa.func.count())
            .where(audit_log.c.action == "file.upload", audit_log.c.at >= since)
            .group_by(audit_log.c.outcome, audit_log.c.detail)
        )

        async def work(tx: Transaction) -> UploadStats:
            succeeded, failed = 0, 0
            reasons: dict[str, int] = {}
            for outcome, detail, count in await tx.execute(query):
                if outcome == "success":
                    succeeded += int(count)
                else:
                    failed += int(count)
                    reasons[detail or "unknown"] = reasons.get(detail or "unknown", 0) + int(count)
            return UploadStats(succeeded=succeeded, failed=failed, errors_by_reason=reasons)

        return await self._run(work)

    async def usage(
        self, *, since: datetime, by_address: bool, top: int
    ) -> tuple[ClientUsage, ...]:
        client = audit_log.c.client_ip if by_address else audit_log.c.key_id
        c = audit_log.c
        ok = c.outcome == "success"
        uploads = _sum_if((c.action == "file.upload") & ok)
        bytes_in = _sum_if((c.action == "file.upload") & ok, sa.func.coalesce(c.bytes, 0))
        downloads = _sum_if(c.action == "file.download")
        bytes_out = _sum_if(c.action == "file.download", sa.func.coalesce(c.bytes, 0))
        errors = _sum_if(c.outcome != "success")
        query = (
            sa.select(client, sa.func.max(c.actor), uploads, bytes_in, downloads, bytes_out, errors)
            .where(c.at >= since, client.is_not(None))
            .group_by(client)
            .order_by((bytes_in + bytes_out).desc(), (uploads + downloads + errors).desc(), client)
            .limit(top)
        )

        async def work(tx: Transaction) -> tuple[ClientUsage, ...]:
            return tuple(
                ClientUsage(
                    client=str(row[0]),
                    actor=row[1],
                    uploads=int(row[2]),
                    bytes_in=int(row[3]),
                    downloads=int(row[4]),
                    bytes_out=int(row[5]),
                    errors=int(row[6]),
                )
                for row in await tx.execute(query)
            )

        return await self._run(work)


def _sum_if(
    condition: sa.ColumnElement[bool], value: sa.ColumnElement[int] | int = 1
) -> sa.ColumnElement[int]:
    return sa.func.coalesce(sa.func.sum(sa.case((condition, value), else_=0)), 0)
