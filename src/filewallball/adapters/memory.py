"""In-process adapters for the embedded default: a TTL cache and the system clock."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import MutableMapping
from datetime import UTC, datetime

from filewallball.domain.ports import Cache, CacheStats, Clock


def live_entry(entries: MutableMapping[str, tuple[float, bytes]], key: str) -> bytes | None:
    """The value of `key` in `entries` (expiry in monotonic seconds, value), dropped if expired."""
    entry = entries.get(key)
    if entry is None:
        return None
    expires, value = entry
    if expires <= time.monotonic():
        del entries[key]
        return None
    return value


class MemoryCache(Cache):
    """A bounded LRU cache with per-entry expiry, local to one process."""

    def __init__(self, *, max_entries: int = 10_000) -> None:
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._max_entries = max_entries
        self._hits = 0
        self._misses = 0
        self._since: datetime | None = None

    async def get(self, key: str) -> bytes | None:
        value = self._lookup(key)
        if self._since is None:
            self._since = datetime.now(UTC)
        if value is None:
            self._misses += 1
        else:
            self._hits += 1
        return value

    def _lookup(self, key: str) -> bytes | None:
        value = live_entry(self._entries, key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    async def set(self, key: str, value: bytes, *, ttl_seconds: int) -> None:
        self._entries[key] = (time.monotonic() + ttl_seconds, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    async def add(self, key: str, value: bytes, *, ttl_seconds: int) -> bool:
        if self._lookup(key) is not None:
            return False
        await self.set(key, value, ttl_seconds=ttl_seconds)
        return True

    async def delete(self, key: str) -> None:
        self._entries.pop(key, None)

    async def ping(self) -> None:
        return None

    async def stats(self) -> CacheStats:
        now = time.monotonic()
        live = sum(1 for expires, _ in self._entries.values() if expires > now)
        return CacheStats(
            backend="memory",
            shared=False,
            hits=self._hits,
            misses=self._misses,
            entries=live,
            since=self._since,
        )

    def __len__(self) -> int:
        return len(self._entries)


class SystemClock(Clock):
    def now(self) -> datetime:
        return datetime.now(UTC)
