"""The FastAPI application: create_app() wires routes, errors, middleware and the lifespan."""

from __future__ import annotations

import asyncio
import gc
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import structlog
from fastapi import FastAPI

from filewallball import __version__
from filewallball.adapters.sql import upgrade
from filewallball.container import Container, build_container, close_resources, open_resources
from filewallball.domain.errors import DependencyUnavailable
from filewallball.domain.jobs import TaskQueue
from filewallball.domain.maintenance import MAINTENANCE_JOB, SCRUB_JOB
from filewallball.domain.rates import RateRule
from filewallball.domain.security import parse_network
from filewallball.entrypoints.http.admission import Admission, AdmissionRules
from filewallball.entrypoints.http.edge import Edge
from filewallball.entrypoints.http.errors import install_error_handlers
from filewallball.entrypoints.http.openapi import describe_api, operation_id
from filewallball.entrypoints.http.readiness import check_all, check_periodically
from filewallball.entrypoints.http.routes import (
    admin,
    content,
    files,
    health,
    metrics,
    stats,
    tus,
)
from filewallball.entrypoints.http.routes.docs import install_docs
from filewallball.entrypoints.http.routes.tus import TUS_REQUEST_HEADERS, TUS_RESPONSE_HEADERS
from filewallball.entrypoints.logs import configure_logging, console_wanted
from filewallball.settings import Settings

log = structlog.get_logger("filewallball")


# While the database cannot be reached at start, its preparation is tried again this often.
START_RETRY_SECONDS = 5.0


async def _start(root: Container) -> bool:
    """Prepare the database: the migration (when it is ours to run), the first admin key, the
    recovery after a crash. False when the database could not be reached: the server serves
    anyway (503s, not ready, with where and why), and _start_when_reachable tries again."""
    settings: Settings = root.settings()
    if not settings.uses_s3:
        await anyio.Path(settings.blob_dir).mkdir(parents=True, exist_ok=True)
    try:
        if settings.migrate_at_start:
            await anyio.to_thread.run_sync(upgrade, settings.resolved_database_url)
        await _bootstrap(root)
        swept, collected = await root.file_service().recover(
            temp_older_than_seconds=settings.temp_max_age_seconds
        )
    except DependencyUnavailable as error:
        log.warning("start_deferred", reason=error.diagnosis, retry_in_seconds=START_RETRY_SECONDS)
        return False
    log.info("recovered", temp_files_removed=swept, orphan_blobs_removed=collected)
    return True


async def _start_when_reachable(root: Container) -> None:
    while True:
        await asyncio.sleep(START_RETRY_SECONDS)
        if await _start(root):
            break
    log.info("database_reachable", database=_redact(root.settings().resolved_database_url))


async def _bootstrap(root: Container) -> None:
    """The first admin key, when there is no key at all (DESIGN.md §2)."""
    settings: Settings = root.settings()
    secret = await root.access_service().bootstrap(preset=settings.bootstrap_admin_key)
    if secret is None or settings.bootstrap_admin_key:
        return
    await anyio.to_thread.run_sync(write_private_file, settings.admin_key_file, secret + "\n")
    # Where the key is, never the key itself.
    log.warning("bootstrap_admin_key_created", path=str(settings.admin_key_file.resolve()))


def _tune_gc() -> None:
    """Fewer, cheaper garbage collections: every request allocates hundreds of objects.

    What exists after start-up (modules, the app, the routes) is moved out of the collector's
    reach (gc.freeze), and a young-generation collection runs per 20,000 net allocations
    rather than per 700: a full collection paused requests for milliseconds, often.
    """
    gc.freeze()
    _, second, third = gc.get_threshold()
    gc.set_threshold(20_000, second, third)


def write_private_file(path: Path, text: str) -> None:
    """Write `text` to `path` readable by its owner only (0600), replacing it atomically."""
    temp = path.with_name(f".{path.name}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)


async def _schedule_maintenance(root: Container) -> None:
    """Queue the housekeeping jobs: maintenance every interval, the scrub once a day.

    Every replica queues them; the job key (the time slot) keeps the queue from holding two,
    and the jobs themselves are idempotent.
    """
    settings: Settings = root.settings()
    queue: TaskQueue = root.task_queue()
    interval = settings.maintenance_interval
    scrubbed_day = None
    while True:
        await asyncio.sleep(interval)
        now = time.time()
        try:
            await queue.enqueue(MAINTENANCE_JOB, key=str(int(now // interval)), payload={})
            day = int(now // 86400)
            if day != scrubbed_day:
                await queue.enqueue(SCRUB_JOB, key=str(day), payload={})
                scrubbed_day = day
        except DependencyUnavailable as error:
            log.warning("maintenance_not_queued", reason=error.diagnosis)


def create_app(
    settings: Settings | None = None,
    container: Container | None = None,
    *,
    tune_gc: bool = False,
) -> FastAPI:
    """The app for `settings` (from the environment when None) or a prepared container."""
    root = container or build_container(settings or Settings())
    configure_logging(root.settings().log_level, console=console_wanted(root.settings().log_format))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await open_resources(root)
        background = [asyncio.create_task(_schedule_maintenance(root))]
        if not await _start(root):
            background.append(asyncio.create_task(_start_when_reachable(root)))
        log.info("started", database=_redact(root.settings().resolved_database_url))
        # filewallball_dependency_up has values from the first scrape, /readyz called or not.
        await check_all(root)
        background.append(asyncio.create_task(check_periodically(root)))
        if tune_gc:
            _tune_gc()
        try:
            yield
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await close_resources(root)

    app = FastAPI(
        title="FileWallBall",
        version=__version__,
        summary="Upload files, get URLs back; download, preview, list and delete them.",
        lifespan=lifespan,
        docs_url=None,  # routes/docs.py serves the docs, assets included
        redoc_url=None,
        generate_unique_id_function=operation_id,
    )
    app.state.container = root
    install_error_handlers(app)
    settings = root.settings()
    trusted_proxies = tuple(parse_network(c) for c in settings.trusted_proxies)
    # Starlette wraps in reverse order: the last added runs first.
    app.add_middleware(
        Admission,
        access=root.access_service,
        limiter=root.rate_limiter,
        auditor=root.auditor,
        config=AdmissionRules(
            rate_limit=RateRule.parse(settings.rate_limit),
            upload_rate_limit=RateRule.parse(settings.upload_rate_limit),
            public_docs=settings.public_docs,
            metrics_cidrs=tuple(parse_network(c) for c in settings.metrics_allowed_cidrs),
        ),
    )
    cors = (
        {
            "allow_origins": settings.cors_origins,
            "allow_methods": ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"],
            "allow_headers": [
                "Authorization",
                "Content-Type",
                "Content-Digest",
                "Range",
                "If-None-Match",
                "If-Match",
                "If-Range",
                "X-Request-ID",
                *TUS_REQUEST_HEADERS,
            ],
            "expose_headers": [
                "ETag",
                "Content-Range",
                "Content-Disposition",
                "X-Request-ID",
                "Location",
                "RateLimit",
                "RateLimit-Policy",
                "Retry-After",
                "X-Preview-Truncated",
                *TUS_RESPONSE_HEADERS,
            ],
            "max_age": 600,
        }
        if settings.cors_origins
        else None
    )
    # One layer around the gate: request id, access log, HTTP metrics, headers, CORS.
    app.add_middleware(Edge, hsts=settings.hsts, trusted_proxies=trusted_proxies, cors=cors)
    for module in (files, content, tus, admin, stats, health, metrics):
        app.include_router(module.router)
    install_docs(app)
    describe_api(app)
    return app


def serve_app() -> FastAPI:
    """The app as `filewallball serve` runs it, once per worker process: the garbage collector
    tuned for serving (not done in tests and embedding, where the process is not ours)."""
    return create_app(tune_gc=True)


def _redact(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    return f"{scheme}{sep}{credentials.split(':')[0]}:***@{host}" if at else url
