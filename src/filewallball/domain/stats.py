"""Statistics for operators: upload outcomes, usage per client, storage, the record cache."""

from __future__ import annotations

from datetime import timedelta

from filewallball.domain.ports import (
    AuditLog,
    Cache,
    CacheStats,
    ClientUsage,
    Clock,
    StatsRepository,
    StorageTotals,
    UploadStats,
    UsageRepository,
)
from filewallball.domain.security import Permission, Principal


class StatsService:
    def __init__(
        self,
        *,
        stats: StatsRepository,
        usage: UsageRepository,
        cache: Cache,
        audit: AuditLog,
        clock: Clock,
    ) -> None:
        self._stats = stats
        self._audit = audit
        self._usage = usage
        self._cache = cache
        self._clock = clock

    async def uploads(self, principal: Principal, *, window: timedelta) -> UploadStats:
        principal.require(Permission.STATS_READ)
        await self._audit.flush()  # this process's queued entries count too
        return await self._stats.uploads(since=self._clock.now() - window)

    async def usage(
        self, principal: Principal, *, window: timedelta, by_address: bool, top: int
    ) -> tuple[ClientUsage, ...]:
        principal.require(Permission.STATS_READ)
        await self._audit.flush()
        return await self._stats.usage(
            since=self._clock.now() - window, by_address=by_address, top=top
        )

    async def storage(self, principal: Principal) -> StorageTotals:
        principal.require(Permission.STATS_READ)
        return await self._usage.totals()

    async def cache(self, principal: Principal) -> CacheStats:
        principal.require(Permission.STATS_READ)
        return await self._cache.stats()
