"""What every command does before its work, and how it fails: one line on stderr, never a
traceback for what an operator can fix.

- An invalid setting names its FWB_* variable and exits 2 (a usage error: fix and rerun),
  before any server or worker process is started, so nothing respawns in a loop.
- A one-shot command (migrate, keys, backup) that cannot reach a dependency says which
  (host:port) and what the driver said, and exits 1.
"""

from __future__ import annotations

import socket
import sqlite3
from collections.abc import Callable
from typing import NoReturn, TypeVar

import typer

from filewallball.domain.errors import DependencyUnavailable, FileWallBallError
from filewallball.settings import Settings, SettingsError, load_settings

T = TypeVar("T")

USAGE_ERROR = 2
FAILURE = 1
# What reaching a server raises when it is not there (refused, unknown host, timed out).
_UNREACHABLE = (ConnectionError, socket.gaierror, TimeoutError)


def settings_or_exit() -> Settings:
    """The settings, or each invalid FWB_* variable on a line of its own and exit 2."""
    try:
        return load_settings()
    except SettingsError as error:
        for line in str(error).splitlines():
            typer.echo(f"filewallball: invalid setting: {line}", err=True)
        raise typer.Exit(code=USAGE_ERROR) from None


def fail(message: str, *, code: int = FAILURE) -> NoReturn:
    """`error: <message>` on one line of stderr, and exit."""
    typer.echo(f"error: {' '.join(message.split())}", err=True)
    raise typer.Exit(code=code)


def guarded(call: Callable[[], T], *, settings: Settings | None = None) -> T:
    """Run `call`; an expected failure is one `error: ...` line and exit 1.

    Expected: what the domain reports (FileWallBallError; a dependency with where and why),
    and what the database, the disk or the migrations raise where nothing wraps it. Anything
    else is a bug, and keeps its traceback.
    """
    from alembic.util import CommandError
    from sqlalchemy.exc import SQLAlchemyError

    from filewallball.adapters.sql.store import database_address, driver_reason

    try:
        return call()
    except DependencyUnavailable as error:
        fail(error.diagnosis)
    except FileWallBallError as error:
        fail(error.detail)
    except (SQLAlchemyError, sqlite3.Error, *_UNREACHABLE) as error:
        from sqlalchemy import make_url

        if settings is None:
            fail(driver_reason(error))
        where = database_address(make_url(settings.resolved_database_url))
        fail(f"database at {where}: {driver_reason(error)}")
    except (OSError, CommandError) as error:
        fail(str(error) or type(error).__name__)


def check_object_storage(settings: Settings) -> None:
    """With FWB_S3_BUCKET: a missing bucket is a setting to fix, said here and exit 1; an
    unreachable store only a warning (the process starts, not ready, and tries again)."""
    if not settings.uses_s3:
        return
    import asyncio

    # The store alone, not the container: this runs in the server's parent process, which
    # would otherwise keep every adapter imported for its whole life.
    from filewallball.adapters.s3 import MissingBucket, S3BlobStore, S3Location

    async def look() -> None:
        store = S3BlobStore(S3Location(**settings.s3_location_args()))
        try:
            await store.check_bucket()
        finally:
            await store.aclose()

    try:
        asyncio.run(look())
    except MissingBucket as error:
        fail(f"{error.diagnosis}: create it, or set FWB_S3_BUCKET to one that exists")
    except DependencyUnavailable as error:
        typer.echo(
            f"warning: {error.diagnosis}; starting anyway, not ready until it answers", err=True
        )
