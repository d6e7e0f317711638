"""The FastAPI application: create_app() wires routes, errors, middleware and the lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import structlog
from fastapi import FastAPI

from filewallball import __version__
from filewallball.adapters.sql import upgrade
from filewallball.container import Container, build_container, close_clients
from filewallball.domain.errors import DependencyUnavailable
from filewallball.entrypoints.http.errors import install_error_handlers
from filewallball.entrypoints.http.middleware import RequestContextMiddleware
from filewallball.entrypoints.http.routes import content, files, health
from filewallball.entrypoints.logs import configure_logging
from filewallball.settings import Settings

log = structlog.get_logger("filewallball")


async def _start(root: Container) -> None:
    settings: Settings = root.settings()
    await anyio.Path(settings.blob_dir).mkdir(parents=True, exist_ok=True)
    if settings.migrate_at_start:
        await anyio.to_thread.run_sync(upgrade, settings.resolved_database_url)
    try:
        swept, collected = await root.file_service().recover(
            temp_older_than_seconds=settings.temp_max_age_seconds
        )
        log.info("recovered", temp_files_removed=swept, orphan_blobs_removed=collected)
    except DependencyUnavailable as error:
        # Start anyway: requests answer 503 until the database is back.
        log.warning("recovery_skipped", reason=error.detail)


def create_app(settings: Settings | None = None, container: Container | None = None) -> FastAPI:
    """The app for `settings` (from the environment when None) or a prepared container."""
    root = container or build_container(settings or Settings())
    configure_logging(root.settings().log_level)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await _start(root)
        log.info("started", database=_redact(root.settings().resolved_database_url))
        try:
            yield
        finally:
            await close_clients(root)

    app = FastAPI(
        title="FileWallBall",
        version=__version__,
        summary="Upload files, get URLs back; download, preview, list and delete them.",
        lifespan=lifespan,
    )
    app.state.container = root
    install_error_handlers(app)
    app.add_middleware(RequestContextMiddleware)
    for module in (files, content, health):
        app.include_router(module.router)
    return app


def _redact(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    return f"{scheme}{sep}{credentials.split(':')[0]}:***@{host}" if at else url
