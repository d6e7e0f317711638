"""Operators' statistics (admin role): upload errors, usage per client, storage."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Literal

from fastapi import Depends, Query, Request
from pydantic import BaseModel

from filewallball.domain.errors import InvalidRequest
from filewallball.domain.stats import StatsService
from filewallball.entrypoints.http.deps import Caller, container
from filewallball.entrypoints.http.openapi import problems
from filewallball.entrypoints.http.routes import Router
from filewallball.settings import parse_duration

_PROBLEMS = problems(400, 401, 403, 503)
router = Router(prefix="/stats", tags=["stats"], responses=_PROBLEMS)
MAX_WINDOW = timedelta(days=366)


async def stats_service(request: Request) -> StatsService:
    service: StatsService = container(request).stats_service()
    return service


Stats = Annotated[StatsService, Depends(stats_service)]
WindowParam = Annotated[str, Query(max_length=16, description="e.g. 15m, 24h, 7d")]


def _window(raw: str) -> timedelta:
    try:
        window = timedelta(seconds=parse_duration(raw))
    except ValueError as error:
        raise InvalidRequest(str(error), code="invalid_window") from error
    if not timedelta(0) < window <= MAX_WINDOW:
        raise InvalidRequest(
            "the window must be between 1 second and 366 days", code="invalid_window"
        )
    return window


class ErrorStats(BaseModel):
    window: str
    uploads: int
    succeeded: int
    failed: int
    success_rate: float | None
    errors_by_reason: dict[str, int]


class ClientStats(BaseModel):
    client: str
    actor: str | None
    uploads: int
    bytes_in: int
    downloads: int
    bytes_out: int
    errors: int


class UsageStats(BaseModel):
    window: str
    by: str
    items: list[ClientStats]


class StorageStats(BaseModel):
    files: int
    logical_bytes: int
    blobs: int
    stored_bytes: int
    dedup_ratio: float


class CacheStatsOut(BaseModel):
    cache: str
    backend: str
    shared: bool
    hits: int
    misses: int
    ratio: float | None
    entries: int
    since: datetime | None


@router.get("/errors", response_model=ErrorStats)
async def errors_stats(stats: Stats, caller: Caller, window: WindowParam = "24h") -> ErrorStats:
    result = await stats.uploads(caller, window=_window(window))
    return ErrorStats(
        window=window,
        uploads=result.succeeded + result.failed,
        succeeded=result.succeeded,
        failed=result.failed,
        success_rate=result.success_rate,
        errors_by_reason=result.errors_by_reason,
    )


@router.get("/usage", response_model=UsageStats)
async def usage_stats(
    stats: Stats,
    caller: Caller,
    window: WindowParam = "24h",
    by: Literal["key", "ip"] = "key",
    top: Annotated[int, Query(ge=1, le=1000)] = 20,
) -> UsageStats:
    clients = await stats.usage(caller, window=_window(window), by_address=by == "ip", top=top)
    return UsageStats(
        window=window,
        by=by,
        items=[
            ClientStats(
                client=c.client,
                actor=c.actor,
                uploads=c.uploads,
                bytes_in=c.bytes_in,
                downloads=c.downloads,
                bytes_out=c.bytes_out,
                errors=c.errors,
            )
            for c in clients
        ],
    )


@router.get("/storage", response_model=StorageStats)
async def storage_stats(stats: Stats, caller: Caller) -> StorageStats:
    totals = await stats.storage(caller)
    return StorageStats(
        files=totals.files,
        logical_bytes=totals.logical_bytes,
        blobs=totals.blobs,
        stored_bytes=totals.stored_bytes,
        dedup_ratio=round(totals.dedup_ratio, 4),
    )


@router.get(
    "/cache",
    response_model=CacheStatsOut,
    summary="Record cache hits, misses, hit ratio and entries",
    description=(
        "Counted in Redis by every replica (`shared: true`). Without Redis each process has a"
        " cache of its own, and these are that process's figures (`shared: false`)."
    ),
)
async def cache_stats(stats: Stats, caller: Caller) -> CacheStatsOut:
    result = await stats.cache(caller)
    return CacheStatsOut(
        cache="records",
        backend=result.backend,
        shared=result.shared,
        hits=result.hits,
        misses=result.misses,
        ratio=None if result.ratio is None else round(result.ratio, 4),
        entries=result.entries,
        since=result.since,
    )
