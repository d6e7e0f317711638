"""`filewallball serve`, `migrate` and `worker`: run the API, bring the schema up to date, run jobs."""

from __future__ import annotations

import asyncio
import enum
import errno
import importlib.util
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from filewallball.entrypoints.cli.startup import (
    USAGE_ERROR,
    check_object_storage,
    fail,
    guarded,
    settings_or_exit,
)
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
    settings = settings_or_exit()
    _check_data_dir(settings)
    _check_port_free(host, port)
    check_object_storage(settings)
    from filewallball.entrypoints import metrics_folder

    # Before the logging module: it imports prometheus_client, which must find the folder set.
    metrics_folder.prepare(workers)
    from filewallball.entrypoints.logs import configure_logging, console_wanted, server_log_config

    console = console_wanted(settings.log_format)
    configure_logging(settings.log_level, console=console)
    log_config = server_log_config(settings.log_level, console=console)
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


def _check_data_dir(settings: Settings) -> None:
    """FWB_DATA_DIR must be a folder this user can write: said once here, rather than by every
    worker's crash (and respawn) at start."""
    folder = settings.data_dir
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        fail(
            f"FWB_DATA_DIR={str(folder)!r} is not a folder this user (uid {os.getuid()}) can"
            f" write: {error.strerror or error}",
            code=USAGE_ERROR,
        )


def _check_port_free(host: str, port: int) -> None:
    """Refuse a port another server listens on: granian binds with SO_REUSEPORT, so a second
    server would silently share it, each answering some of the requests."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no owner
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                fail(f"cannot serve on {host}:{port}: address in use (another server listens)")
            fail(f"cannot serve on {host}:{port}: {error.strerror or error}")


def _uvicorn_protocol() -> str | type[asyncio.Protocol]:
    """httptools with a header deadline; uvicorn's h11 (keep-alive timeout only) without it."""
    if importlib.util.find_spec("httptools") is None:
        return "h11"
    from filewallball.entrypoints.cli.uvicorn_http import HeaderDeadlineProtocol

    return HeaderDeadlineProtocol


def migrate() -> None:
    """Bring the database schema to the latest version (Alembic upgrade head)."""
    from filewallball.adapters.sql import upgrade
    from filewallball.entrypoints.logs import configure_logging, console_wanted

    settings = settings_or_exit()
    configure_logging(settings.log_level, console=console_wanted(settings.log_format))
    guarded(lambda: upgrade(settings.resolved_database_url), settings=settings)
    typer.echo("database schema is up to date")


def worker(
    concurrency: Annotated[int, typer.Option(min=1, help="Jobs run at once")] = 4,
) -> None:
    """Run background jobs (thumbnails, ...) from the Redis queue until SIGTERM."""
    from filewallball.adapters.jobs import run_worker
    from filewallball.container import build_container, close_resources, open_resources
    from filewallball.entrypoints.logs import configure_logging, console_wanted

    settings = settings_or_exit()
    configure_logging(settings.log_level, console=console_wanted(settings.log_format))
    if not settings.redis_url:
        typer.echo(
            "error: the worker needs FWB_REDIS_URL; without Redis, jobs run inside `serve`",
            err=True,
        )
        raise typer.Exit(code=2)
    check_object_storage(settings)
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
