"""Kubernetes probes: liveness without dependencies, readiness with each dependency's state
(the checks: readiness.py)."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import JSONResponse

from filewallball.entrypoints.http.deps import container
from filewallball.entrypoints.http.errors import not_ready
from filewallball.entrypoints.http.openapi import problems
from filewallball.entrypoints.http.readiness import check_all
from filewallball.entrypoints.http.routes import Router
from filewallball.entrypoints.http.schemas import Health, Readiness

router = Router(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, responses=problems(503))
async def readyz(request: Request) -> JSONResponse:
    checks = await check_all(container(request))
    failing_required = any(c.status != "ok" and c.required for c in checks.values())
    degraded = any(c.status != "ok" for c in checks.values())
    body = Readiness(status="degraded" if degraded else "ok", checks=checks).model_dump(mode="json")
    if failing_required:
        return not_ready(body["checks"], scope=request.scope)
    return JSONResponse(body)
