"""File records and API keys read through a Cache: decorators of their repositories.

The rule, for both: every change of a cached value goes to the database first, then invalidates
the key (and only returns once no process can read the old copy); a read that misses reads the
database and fills the cache only with the fence of its own lookup, so a change made meanwhile
always wins. The database has the final word: a tombstone (a key just invalidated) is a miss.

Which Cache: Redis when there is one (shared by every process and replica, exact across outages,
see near_cache); in the embedded default none (adapters.memory.NoCache): an in-process copy
could not see another worker's change.

A cached key's `last_used_at` lags by up to the TTL (touches go to the database only, so they
cannot race an invalidation); `list` reads the database and is exact.
"""

from __future__ import annotations

import functools
from dataclasses import asdict
from datetime import datetime
from typing import Any

import orjson

from filewallball.domain.models import (
    ByteSize,
    ContentType,
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
from filewallball.domain.ports import Cache, FileRepository, FileUnitOfWork, KeyRepository
from filewallball.domain.security import ApiKey, Role


class CachedFileRepository(FileRepository):
    """Records by id through `cache`; every other query goes to the database."""

    def __init__(self, inner: FileRepository, *, cache: Cache) -> None:
        self._inner = inner
        self._cache = cache

    async def get(self, file_id: FileId) -> FileRecord | None:
        found = await self._cache.lookup(file_id)
        if found.value is not None:
            try:
                return _record_from_json(found.value)
            except (ValueError, KeyError, TypeError):
                pass  # unreadable (another version's format): the database decides
        record = await self._inner.get(file_id)
        if record is not None and found.fence is not None:
            await self._cache.fill(file_id, _record_to_json(record), fence=found.fence)
        return record

    def unit_of_work(self) -> FileUnitOfWork:
        # It adds records (new ids: nothing cached can name them) and collects blobs.
        return self._inner.unit_of_work()

    async def remove(self, file_id: FileId) -> FileRecord | None:
        removed = await self._inner.remove(file_id)
        await self._cache.invalidate(file_id)
        return removed

    async def trash(self, file_id: FileId, *, at: datetime) -> FileRecord | None:
        trashed = await self._inner.trash(file_id, at=at)
        await self._cache.invalidate(file_id)
        return trashed

    async def restore(self, file_id: FileId) -> FileRecord | None:
        restored = await self._inner.restore(file_id)
        await self._cache.invalidate(file_id)
        return restored

    async def set_thumbnail_status(self, file_id: FileId, status: ThumbnailStatus) -> None:
        await self._inner.set_thumbnail_status(file_id, status)
        await self._cache.invalidate(file_id)

    async def expect_blob(self, sha256: Sha256, *, at: datetime) -> None:
        await self._inner.expect_blob(sha256, at=at)

    async def unreferenced_blobs(self) -> list[Sha256]:
        return await self._inner.unreferenced_blobs()

    async def list(self, query: ListQuery) -> Page[FileRecord]:
        return await self._inner.list(query)

    async def referenced_blobs(self, *, after: Sha256 | None, limit: int) -> tuple[Sha256, ...]:
        return await self._inner.referenced_blobs(after=after, limit=limit)

    async def due_for_removal(
        self, *, now: datetime, trashed_before: datetime, limit: int
    ) -> tuple[FileId, ...]:
        return await self._inner.due_for_removal(
            now=now, trashed_before=trashed_before, limit=limit
        )

    async def ping(self) -> None:
        await self._inner.ping()


class CachedKeyRepository(KeyRepository):
    """API keys by id through `cache`, so the per-request lookup costs no database round trip."""

    def __init__(self, inner: KeyRepository, *, cache: Cache) -> None:
        self._inner = inner
        self._cache = cache

    @property
    def uncached(self) -> KeyRepository:
        return self._inner

    async def get(self, key_id: str) -> ApiKey | None:
        if not _cacheable(key_id):
            return await self._inner.get(key_id)
        found = await self._cache.lookup(key_id)
        if found.value is not None:
            try:
                return _key_from_json(found.value)
            except (ValueError, KeyError, TypeError):
                pass  # unreadable (another version's format): the database decides
        key = await self._inner.get(key_id)
        if key is not None and found.fence is not None:
            await self._cache.fill(key_id, orjson.dumps(asdict(key)), fence=found.fence)
        return key

    async def add(self, key: ApiKey) -> None:
        await self._inner.add(key)

    async def list(self, *, limit: int, after: str | None = None) -> list[ApiKey]:
        return await self._inner.list(limit=limit, after=after)

    async def revoke(self, key_id: str, *, at: datetime) -> ApiKey | None:
        revoked = await self._inner.revoke(key_id, at=at)
        if _cacheable(key_id):
            await self._cache.invalidate(key_id)
        return revoked

    async def touch(self, key_id: str, *, at: datetime) -> None:
        # The cached copy keeps its older last_used_at; callers track their own touches.
        await self._inner.touch(key_id, at=at)

    async def count(self) -> int:
        return await self._inner.count()


def _cacheable(key_id: str) -> bool:
    """Ids are 12 hex digits; anything else is never one of ours, nor a fit Redis key."""
    return key_id.isascii() and key_id.isalnum()


def _record_to_json(record: FileRecord) -> bytes:
    # orjson writes datetimes as ISO 8601 and the str subclasses and enums as their values.
    return orjson.dumps(record)


@functools.lru_cache(maxsize=4096)
def _record_from_json(raw: bytes) -> FileRecord:
    """The record `_record_to_json` wrote; the same bytes decode once (records are immutable)."""
    data: dict[str, Any] = orjson.loads(raw)
    return FileRecord(
        id=FileId(data["id"]),
        filename=Filename(data["filename"]),
        size=ByteSize(data["size"]),
        content_type=ContentType(data["content_type"]),
        sha256=Sha256(data["sha256"]),
        created_at=datetime.fromisoformat(data["created_at"]),
        visibility=Visibility(data["visibility"]),
        owner=data["owner"],
        scan_status=ScanStatus(data["scan_status"]),
        thumbnail_status=ThumbnailStatus(data["thumbnail_status"]),
        expires_at=_maybe_datetime(data["expires_at"]),
        deleted_at=_maybe_datetime(data["deleted_at"]),
    )


@functools.lru_cache(maxsize=1024)
def _key_from_json(raw: bytes) -> ApiKey:
    """The key orjson wrote from the dataclass; the same bytes decode once (keys are immutable)."""
    data: dict[str, Any] = orjson.loads(raw)
    created = _maybe_datetime(data["created_at"])
    assert created is not None
    return ApiKey(
        id=data["id"],
        name=data["name"],
        role=Role(data["role"]),
        owner=data["owner"],
        secret_hash=data["secret_hash"],
        created_at=created,
        expires_at=_maybe_datetime(data["expires_at"]),
        revoked_at=_maybe_datetime(data["revoked_at"]),
        last_used_at=_maybe_datetime(data["last_used_at"]),
        allowed_cidrs=tuple(data["allowed_cidrs"]),
        quota_bytes=data["quota_bytes"],
        quota_files=data["quota_files"],
    )


def _maybe_datetime(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None
