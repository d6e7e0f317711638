"""The schema's revisions and `upgrade`: Alembic migrations, one at a time per database."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

from filewallball.adapters.sql.engine import sqlite_path
from filewallball.adapters.sql.store import database_address, driver_reason
from filewallball.domain.errors import DependencyUnavailable

MIGRATIONS = Path(__file__).with_name("migrations")
# Alembic keeps the running migration's context in module globals: one upgrade per process.
_UPGRADE_IN_PROCESS = threading.Lock()
# What a database that is not there raises: refused, unknown host, timed out, or its driver
# saying so (a migration's own mistakes are not among them).
_UNREACHABLE = (
    sa.exc.OperationalError,
    sa.exc.InterfaceError,
    ConnectionError,
    TimeoutError,
    socket.gaierror,
)


@functools.cache
def head_revision() -> str:
    """The latest migration's revision: the schema this version of the code writes and expects."""
    head = ScriptDirectory(str(MIGRATIONS)).get_current_head()
    if head is None:
        raise RuntimeError("no migrations found")
    return head


@functools.cache
def _revisions() -> frozenset[str]:
    return frozenset(
        script.revision for script in ScriptDirectory(str(MIGRATIONS)).walk_revisions()
    )


def known_revisions() -> set[str]:
    """Every revision this version of the code has a migration for, the head included."""
    return set(_revisions())


def older_revisions() -> frozenset[str]:
    """The known revisions before the head: a database at one of them needs `upgrade`."""
    return _revisions() - {head_revision()}


def upgrade(url: str) -> None:
    """Migrate the database at `url` to the latest schema. Blocking: run it off the event loop.

    A database that cannot be reached is DependencyUnavailable (where, and the driver's reason).
    """
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["url"] = url  # not a main option: ConfigParser would mangle "%" in it
    try:
        with _UPGRADE_IN_PROCESS, _migration_lock(url):
            command.upgrade(config, "head")
    except _UNREACHABLE as error:
        where = database_address(sa.make_url(url))
        raise DependencyUnavailable(
            "database", diagnosis=f"database at {where}: {driver_reason(error)}"
        ) from error


@contextlib.contextmanager
def _migration_lock(url: str) -> Iterator[None]:
    """Serialise migrations of one SQLite file across processes and threads.

    PostgreSQL needs no file: env.py takes an advisory lock in the migration's transaction.
    """
    path = sqlite_path(url) if sa.make_url(url).get_backend_name() == "sqlite" else None
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    # flock, not lockf: flock locks belong to the open file, so threads of one process exclude
    # each other too. The file is never deleted: deleting it would let two holders coexist.
    fd = os.open(f"{path}.migrate-lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
