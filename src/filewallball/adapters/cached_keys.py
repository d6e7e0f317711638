"""API keys read through a shared cache, so a request costs no database round trip.

Revocation still takes effect at once, on every replica: a revoke writes a tombstone that a
read-through can never overwrite (it only adds, SET NX), and a tombstone sends lookups to the
database, which has the final word. Only a cache every replica shares (Redis) may be used:
an in-process cache would keep a revoked key alive in the other processes.

A cached key's `last_used_at` lags by up to the TTL (touches go to the database only, so they
cannot race a tombstone); `list` reads the database and is exact.
"""

from __future__ import annotations

import functools
from dataclasses import asdict
from datetime import datetime
from typing import Any

import orjson

from filewallball.domain.ports import Cache, KeyRepository
from filewallball.domain.security import ApiKey, Role

TOMBSTONE = b"-"


class CachedKeyRepository(KeyRepository):
    def __init__(self, inner: KeyRepository, *, cache: Cache, ttl_seconds: int = 60) -> None:
        self._inner = inner
        self._cache = cache
        self._ttl = ttl_seconds

    @property
    def uncached(self) -> KeyRepository:
        return self._inner

    async def get(self, key_id: str) -> ApiKey | None:
        if not _cacheable(key_id):
            return await self._inner.get(key_id)
        cached = await self._cache.get(_cache_key(key_id))
        if cached is not None and cached != TOMBSTONE:
            try:
                return _from_json(cached)
            except (ValueError, KeyError, TypeError):
                cached = None  # unreadable (another version's format): the database decides
        key = await self._inner.get(key_id)
        if key is not None and cached is None:
            await self._cache.add(_cache_key(key_id), _to_json(key), ttl_seconds=self._ttl)
        return key

    async def add(self, key: ApiKey) -> None:
        await self._inner.add(key)

    async def list(self, *, limit: int, after: str | None = None) -> list[ApiKey]:
        return await self._inner.list(limit=limit, after=after)

    async def revoke(self, key_id: str, *, at: datetime) -> ApiKey | None:
        # Before and after: a lookup between the two sees the database's answer either way.
        await self._bury(key_id)
        revoked = await self._inner.revoke(key_id, at=at)
        await self._bury(key_id)
        return revoked

    async def touch(self, key_id: str, *, at: datetime) -> None:
        # The cached copy keeps its older last_used_at; callers track their own touches.
        await self._inner.touch(key_id, at=at)

    async def count(self) -> int:
        return await self._inner.count()

    async def _bury(self, key_id: str) -> None:
        if not _cacheable(key_id):
            return
        # Outlives any copy added before it (same TTL, written later).
        await self._cache.set(_cache_key(key_id), TOMBSTONE, ttl_seconds=self._ttl)


def _cacheable(key_id: str) -> bool:
    """Ids are 12 hex digits; anything else is never one of ours, nor a fit Redis key."""
    return key_id.isascii() and key_id.isalnum()


def _cache_key(key_id: str) -> str:
    return f"apikey:{key_id}"


def _to_json(key: ApiKey) -> bytes:
    # orjson writes datetimes as ISO 8601, the role as its value, the CIDR tuple as a list.
    return orjson.dumps(asdict(key))


@functools.lru_cache(maxsize=1024)
def _from_json(raw: bytes) -> ApiKey:
    """The key `_to_json` wrote; the same bytes decode once (keys are immutable values)."""
    data: dict[str, Any] = orjson.loads(raw)

    def stamp(name: str) -> datetime | None:
        value = data[name]
        return datetime.fromisoformat(value) if value else None

    created = stamp("created_at")
    assert created is not None
    return ApiKey(
        id=data["id"],
        name=data["name"],
        role=Role(data["role"]),
        owner=data["owner"],
        secret_hash=data["secret_hash"],
        created_at=created,
        expires_at=stamp("expires_at"),
        revoked_at=stamp("revoked_at"),
        last_used_at=stamp("last_used_at"),
        allowed_cidrs=tuple(data["allowed_cidrs"]),
        quota_bytes=data["quota_bytes"],
        quota_files=data["quota_files"],
    )
