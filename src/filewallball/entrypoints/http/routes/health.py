"""Kubernetes probes: liveness without dependencies, readiness with each dependency's state."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from fastapi import Request
from fastapi.responses import JSONResponse

from filewallball.domain.errors import DependencyUnavailable, FileWallBallError
from filewallball.entrypoints.http.deps import container
from filewallball.entrypoints.http.errors import not_ready
from filewallball.entrypoints.http.openapi import problems
from filewallball.entrypoints.http.routes import Router
from filewallball.entrypoints.http.schemas import Check, Health, Readiness

router = Router(tags=["health"])

CHECK_TIMEOUT_SECONDS = 2.0


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    return Health(status="ok")


async def _check(probe: Callable[[], Awaitable[None]], *, required: bool) -> Check:
    started = time.perf_counter()
    status, detail = "ok", None
    try:
        await asyncio.wait_for(probe(), CHECK_TIMEOUT_SECONDS)
    except DependencyUnavailable as error:
        status, detail = "failing", error.diagnosis  # where it was sought, and why it failed
    except (FileWallBallError, TimeoutError, OSError) as error:
        status, detail = "failing", str(error) or type(error).__name__
    latency = round((time.perf_counter() - started) * 1000, 3)
    return Check(status=status, required=required, latency_ms=latency, detail=detail)


@router.get("/readyz", response_model=Readiness, responses=problems(503))
async def readyz(request: Request) -> JSONResponse:
    root = container(request)
    settings = root.settings()
    blobs = root.blobs()

    async def blob_storage() -> None:
        await blobs.check_writable()
        free = await blobs.free_bytes()
        if free is not None and free < settings.min_free_bytes:
            raise DependencyUnavailable(
                "blob storage",
                f"{free} bytes free, below FWB_MIN_FREE_BYTES={settings.min_free_bytes}",
            )

    probes: dict[str, tuple[Callable[[], Awaitable[None]], bool]] = {
        "database": (root.files().ping, True),
        "blob_storage": (blob_storage, True),
    }
    if settings.redis_url:
        # The service serves from the database while Redis is down: degraded, still ready.
        probes["redis"] = (root.cache().ping, False)
    if settings.clamd_address:
        # Uploads fail closed without clamd, unless the operator chose to let them in.
        probes["clamd"] = (root.scanner().ping, not settings.scan_fail_open)
    results = await asyncio.gather(*(_check(p, required=r) for p, r in probes.values()))
    checks = dict(zip(probes, results, strict=True))
    for name, check in checks.items():
        root.observe_dependency()(name, check.status == "ok")
    failing_required = any(c.status != "ok" and c.required for c in checks.values())
    degraded = any(c.status != "ok" for c in checks.values())
    body = Readiness(status="degraded" if degraded else "ok", checks=checks).model_dump(mode="json")
    if failing_required:
        return not_ready(body["checks"], scope=request.scope)
    return JSONResponse(body)
