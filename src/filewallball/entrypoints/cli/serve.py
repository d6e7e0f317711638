"""`filewallball serve`, `migrate` and `worker`: run the API, bring the schema up to date, run jobs."""

from __future__ import annotations

import asyncio
import enum
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from filewallball.settings import Settings

T = TypeVar("T")


class ServerKind(enum.StrEnum):
    UVICORN = "uvicorn"
    GRANIAN = "granian"


APP_FACTORY = "filewallball.entrypoints.http.app:serve_app"


def serve(
    host: Annotated[str, typer.Option(help="Address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes")] = 1,
    server: Annotated[
        ServerKind,
        typer.Option(
            help="granian sends whole files without Python in the loop (ASGI pathsend);"
            " uvicorn streams them through the event loop"
        ),
    ] = ServerKind.GRANIAN,
    ssl_certfile: Annotated[str | None, typer.Option(help="PEM certificate: serve HTTPS")] = None,
    ssl_keyfile: Annotated[
        str | None, typer.Option(help="PEM private key of the certificate (PKCS#8 for granian)")
    ] = None,
) -> None:
    """Serve the HTTP API (granian by default, or uvicorn), in the foreground until SIGTERM."""
    from filewallball.entrypoints import metrics_folder

    # First: the logging module imports prometheus_client, which must find the folder set.
    metrics_folder.prepare(workers)
    from filewallball.entrypoints.logs import configure_logging, server_log_config

    settings = Settings()
    configure_logging(settings.log_level)
    log_config = server_log_config(settings.log_level)
    has_uvloop = importlib.util.find_spec("uvloop") is not None
    if server is ServerKind.GRANIAN:
        from granian.constants import HTTPModes, Interfaces, Loops, SSLProtocols
        from granian.http import HTTP1Settings
        from granian.server import Server

        Server(
            APP_FACTORY,
            factory=True,
            address=host,
            port=port,
            interface=Interfaces.ASGI,
            # HTTP/1.1 only: in "auto" mode granian waits without a deadline for the bytes that
            # tell HTTP/1 from HTTP/2, so a connection that sends nothing is held forever.
            http=HTTPModes.http1,
            # One limit from the connection's opening (or the previous response) to the end of
            # the next request's headers: idle, keep-alive and slow-header connections alike.
            http1_settings=HTTP1Settings(
                header_read_timeout=max(1, round(settings.header_read_timeout * 1000))
            ),
            workers=workers,
            loop=Loops.uvloop if has_uvloop else Loops.asyncio,
            log_dictconfig=log_config,
            log_access=False,  # the app writes its own access lines, with request ids
            ssl_cert=Path(ssl_certfile) if ssl_certfile else None,
            ssl_key=Path(ssl_keyfile) if ssl_keyfile else None,
            ssl_protocol_min=SSLProtocols.tls12,
            respawn_failed_workers=True,
            workers_kill_timeout=30,
        ).serve()
        return

    import uvicorn

    uvicorn.run(
        APP_FACTORY,
        factory=True,
        host=host,
        port=port,
        workers=workers,
        loop="uvloop" if has_uvloop else "asyncio",
        http=_uvicorn_protocol(),
        # The keep-alive timeout is also the header deadline of HeaderDeadlineProtocol.
        timeout_keep_alive=max(1, round(settings.header_read_timeout)),
        log_config=log_config,
        access_log=False,
        server_header=False,
        # Client addresses come from the socket; trusted proxies are handled by the app itself.
        proxy_headers=False,
        timeout_graceful_shutdown=30,
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
    )


def _uvicorn_protocol() -> str | type[asyncio.Protocol]:
    """httptools with a header deadline; uvicorn's h11 (keep-alive timeout only) without it."""
    if importlib.util.find_spec("httptools") is None:
        return "h11"
    from filewallball.entrypoints.cli.uvicorn_http import HeaderDeadlineProtocol

    return HeaderDeadlineProtocol


def migrate() -> None:
    """Bring the database schema to the latest version (Alembic upgrade head)."""
    from filewallball.adapters.sql import upgrade
    from filewallball.entrypoints.logs import configure_logging

    settings = Settings()
    configure_logging(settings.log_level)
    upgrade(settings.resolved_database_url)
    typer.echo("database schema is up to date")


def worker(
    concurrency: Annotated[int, typer.Option(min=1, help="Jobs run at once")] = 4,
) -> None:
    """Run background jobs (thumbnails, ...) from the Redis queue until SIGTERM."""
    from filewallball.adapters.jobs import run_worker
    from filewallball.container import build_container, close_resources, open_resources
    from filewallball.entrypoints.logs import configure_logging

    settings = Settings()
    configure_logging(settings.log_level)
    if not settings.redis_url:
        typer.echo(
            "error: the worker needs FWB_REDIS_URL; without Redis, jobs run inside `serve`",
            err=True,
        )
        raise typer.Exit(code=2)
    redis_url = settings.redis_url
    stop_metrics = _worker_metrics(settings)

    async def run() -> None:
        container = build_container(settings)
        await open_resources(container)
        try:
            await run_worker(
                redis_url=redis_url,
                registry=container.job_registry(),
                name=settings.job_queue_name,
                concurrency=concurrency,
            )
        finally:
            await close_resources(container)

    try:
        asyncio.run(run())
    finally:
        stop_metrics()


def _worker_metrics(settings: Settings) -> Callable[[], None]:
    """The worker's metrics endpoint (FWB_WORKER_METRICS_HOST:PORT); what stops it."""
    from filewallball.adapters.metrics import serve_metrics

    host, port = settings.worker_metrics_host, settings.worker_metrics_port
    if port == 0:
        return lambda: None
    try:
        return serve_metrics(host, port)
    except OSError as error:
        typer.echo(
            f"error: cannot serve the worker's metrics on {host}:{port}"
            f" (FWB_WORKER_METRICS_HOST, FWB_WORKER_METRICS_PORT; 0 for none): {error.strerror}",
            err=True,
        )
        raise typer.Exit(code=2) from None
