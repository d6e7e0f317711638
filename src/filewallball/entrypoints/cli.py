"""The `filewallball` command: serve the API, migrate the database."""

from __future__ import annotations

import importlib.util
from typing import Annotated

import typer

from filewallball.settings import Settings

app = typer.Typer(
    help="FileWallBall: self-hosted file upload and management.", no_args_is_help=True
)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes")] = 1,
) -> None:
    """Serve the HTTP API with uvicorn (uvloop and httptools when installed)."""
    import uvicorn

    from filewallball.entrypoints.logs import configure_logging, uvicorn_log_config

    settings = Settings()
    configure_logging(settings.log_level)
    uvicorn.run(
        "filewallball.entrypoints.http.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        http="httptools" if importlib.util.find_spec("httptools") else "h11",
        log_config=uvicorn_log_config(settings.log_level),
        access_log=False,
        server_header=False,
        # Client addresses come from the socket; trusted proxies are handled by the app itself.
        proxy_headers=False,
        timeout_graceful_shutdown=30,
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


def main() -> None:
    app()
