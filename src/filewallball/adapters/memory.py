"""In-process adapters for the embedded default: the system clock, and no cache at all."""

from __future__ import annotations

from datetime import UTC, datetime

from filewallball.domain.ports import Cache, Cached, CacheStats, Clock


class NoCache(Cache):
    """What the embedded default caches: nothing.

    A copy in one process's memory cannot be kept exact when another process (a second worker,
    the CLI) changes the SQLite database, and a lookup there costs about what a cache check
    would; so every read goes to the database.
    """

    async def lookup(self, key: str) -> Cached:
        return Cached(None)

    async def fill(self, key: str, value: bytes, *, fence: str) -> None:
        return None

    async def invalidate(self, key: str) -> None:
        return None

    async def ping(self) -> None:
        return None

    async def stats(self) -> CacheStats:
        return CacheStats(backend="none", shared=False, hits=0, misses=0, entries=0, since=None)


class SystemClock(Clock):
    def now(self) -> datetime:
        return datetime.now(UTC)
