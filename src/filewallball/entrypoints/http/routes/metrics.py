"""GET /metrics: Prometheus text format, for a key with metrics:read or an allowed address."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import anyio
from fastapi import Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

from filewallball.domain.errors import FileWallBallError
from filewallball.domain.security import Permission
from filewallball.entrypoints import metrics_folder
from filewallball.entrypoints.http.context import context_of
from filewallball.entrypoints.http.deps import container
from filewallball.entrypoints.http.routes import Router

router = Router(tags=["health"])


def _registry() -> CollectorRegistry:
    folder = os.environ.get(metrics_folder.ENV)
    if folder:
        # Several workers: add up what every process wrote to the shared folder.
        metrics_folder.forget_dead_processes(Path(folder))
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return registry
    return REGISTRY


@router.get("/metrics", response_class=Response, include_in_schema=False)
async def metrics(request: Request) -> Response:
    principal = context_of(request.scope).principal
    if principal is not None:  # admitted by key (else by an allowed address)
        principal.require(Permission.METRICS_READ)
    root = container(request)
    try:
        totals = await root.usage().totals()
        usage = await anyio.to_thread.run_sync(shutil.disk_usage, root.settings().blob_dir)
        root.observe_storage()(totals, usage.free)
    except (FileWallBallError, OSError):
        pass  # the gauges keep their last values; dependency_up tells why
    # With several workers this reads every process's files: off the event loop.
    body = await anyio.to_thread.run_sync(lambda: generate_latest(_registry()))
    return Response(body, media_type=CONTENT_TYPE_LATEST)
