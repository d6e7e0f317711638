"""The `filewallball` command: serve the API, migrate the database, manage keys, back up, run jobs."""

from __future__ import annotations

import typer

from filewallball.entrypoints.cli.backup import backup
from filewallball.entrypoints.cli.keys import keys
from filewallball.entrypoints.cli.serve import migrate, serve, worker

app = typer.Typer(
    help="FileWallBall: self-hosted file upload and management.", no_args_is_help=True
)
app.command()(serve)
app.command()(migrate)
app.command()(worker)
app.add_typer(keys, name="keys")
app.add_typer(backup, name="backup")


def main() -> None:
    app()
