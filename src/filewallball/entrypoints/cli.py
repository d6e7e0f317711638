"""The `filewallball` command: serve the API, migrate the database."""

from __future__ import annotations

import asyncio
import enum
import importlib.util
import os
import tempfile
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from filewallball.domain.access import AccessService
from filewallball.domain.errors import FileWallBallError
from filewallball.domain.models import MAX_STORED_INT
from filewallball.domain.security import ApiKey, Principal, Role
from filewallball.entrypoints.backup_cli import backup
from filewallball.settings import Settings

T = TypeVar("T")

app = typer.Typer(
    help="FileWallBall: self-hosted file upload and management.", no_args_is_help=True
)


class ServerKind(enum.StrEnum):
    UVICORN = "uvicorn"
    GRANIAN = "granian"


APP_FACTORY = "filewallball.entrypoints.http.app:serve_app"


@app.command()
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
    from filewallball.entrypoints.logs import configure_logging, server_log_config

    settings = Settings()
    configure_logging(settings.log_level)
    if workers > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        # Each worker writes its metrics here; /metrics adds them up (prometheus_client).
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="fwb-metrics-")
    log_config = server_log_config(settings.log_level)
    has_uvloop = importlib.util.find_spec("uvloop") is not None
    if server is ServerKind.GRANIAN:
        from granian.constants import Interfaces, Loops, SSLProtocols
        from granian.server import Server

        Server(
            APP_FACTORY,
            factory=True,
            address=host,
            port=port,
            interface=Interfaces.ASGI,
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
        http="httptools" if importlib.util.find_spec("httptools") else "h11",
        log_config=log_config,
        access_log=False,
        server_header=False,
        # Client addresses come from the socket; trusted proxies are handled by the app itself.
        proxy_headers=False,
        timeout_graceful_shutdown=30,
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
    )


@app.command()
def migrate() -> None:
    """Bring the database schema to the latest version (Alembic upgrade head)."""
    from filewallball.adapters.sql import upgrade
    from filewallball.entrypoints.logs import configure_logging

    settings = Settings()
    configure_logging(settings.log_level)
    upgrade(settings.resolved_database_url)
    typer.echo("database schema is up to date")


@app.command()
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

    asyncio.run(run())


keys = typer.Typer(help="Manage API keys directly in the database.", no_args_is_help=True)
app.add_typer(keys, name="keys")
app.add_typer(backup, name="backup")


def _run_with_access(work: Callable[[AccessService], Awaitable[T]]) -> T:
    """Run `work` against the configured database, as the operator (every permission)."""
    from filewallball.adapters.sql import upgrade
    from filewallball.container import build_container, close_resources, open_resources
    from filewallball.entrypoints.logs import configure_logging

    settings = Settings()
    configure_logging("warning")
    if settings.migrate_at_start:
        upgrade(settings.resolved_database_url)

    async def run() -> T:
        container = build_container(settings)
        await open_resources(container)
        try:
            return await work(container.access_service())
        finally:
            await close_resources(container)

    try:
        return asyncio.run(run())
    except FileWallBallError as error:
        typer.echo(f"error: {error.detail}", err=True)
        raise typer.Exit(code=1) from error


def _key_line(key: ApiKey) -> str:
    state = "revoked" if key.revoked_at else "active"
    expires = key.expires_at.isoformat() if key.expires_at else "never"
    used = key.last_used_at.isoformat() if key.last_used_at else "never"
    return f"{key.id}\t{key.name}\t{key.role}\t{key.owner}\t{state}\texpires={expires}\tused={used}"


@keys.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="What the key is for")],
    role: Annotated[Role, typer.Option(help="admin, uploader or reader")] = Role.UPLOADER,
    owner: Annotated[
        str | None, typer.Option(help="Whose files it sees; default: the name")
    ] = None,
    expires_at: Annotated[
        datetime | None, typer.Option(help="ISO date-time (UTC if no zone)")
    ] = None,
    cidr: Annotated[list[str] | None, typer.Option(help="Allowed network; repeat for more")] = None,
    quota_bytes: Annotated[int | None, typer.Option(min=0, max=MAX_STORED_INT)] = None,
    quota_files: Annotated[int | None, typer.Option(min=0, max=MAX_STORED_INT)] = None,
) -> None:
    """Create a key and print its secret (shown this once)."""
    expiry = (
        expires_at.replace(tzinfo=UTC) if expires_at and expires_at.tzinfo is None else expires_at
    )
    key, secret = _run_with_access(
        lambda access: access.create_key(
            Principal.system("cli"),
            name=name,
            role=role,
            owner=owner,
            expires_at=expiry,
            allowed_cidrs=tuple(cidr or ()),
            quota_bytes=quota_bytes,
            quota_files=quota_files,
        )
    )
    typer.echo(_key_line(key), err=True)
    typer.echo(secret)


@keys.command("list")
def keys_list() -> None:
    """List keys (never their secrets)."""
    for key in _run_with_access(
        lambda access: access.list_keys(Principal.system("cli"), limit=10_000, after=None)
    ):
        typer.echo(_key_line(key))


@keys.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key's id (fwb_<id>_...)")]) -> None:
    """Revoke a key at once."""
    key = _run_with_access(lambda access: access.revoke_key(Principal.system("cli"), key_id))
    typer.echo(_key_line(key))


def main() -> None:
    app()
