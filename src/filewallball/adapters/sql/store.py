"""SqlStore, the base of every SQL repository (one committed transaction per call, one retry),
and SqlUnitOfWork, for work that commits together with the caller's own steps between."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self, TypeVar

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from filewallball.domain.errors import Conflict, DependencyUnavailable

# asyncio.TimeoutError is TimeoutError (an OSError) since Python 3.11.
DRIVER_ERRORS = (SQLAlchemyError, OSError, TimeoutError)
MAX_BIGINT = 2**63 - 1

_T = TypeVar("_T")
# A result whose rows may have any number of columns, of any type (SQLAlchemy's TupleAny).
_Result = sa.CursorResult[*tuple[Any, ...]]


def database_unavailable(engine: AsyncEngine, error: BaseException) -> DependencyUnavailable:
    """The database is unreachable: clients hear only that; operators where and why."""
    return DependencyUnavailable(
        "database", diagnosis=f"database at {database_address(engine.url)}: {driver_reason(error)}"
    )


def database_address(url: sa.URL) -> str:
    """host:port of a server's URL, the file of SQLite's; never the password."""
    if url.get_backend_name() == "sqlite":
        return url.database or ":memory:"
    return f"{url.host or 'localhost'}:{url.port or 5432}"  # PostgreSQL: the only other one


def driver_reason(error: BaseException) -> str:
    """The innermost cause's message, on one line: what the driver or the OS said."""
    causes = [error]
    while (cause := causes[-1].__cause__ or causes[-1].__context__) is not None and len(
        causes
    ) < 10:
        causes.append(cause)
    for candidate in reversed(causes):
        text = " ".join(str(candidate).split())
        if text:
            return text[:300]
    return type(error).__name__


class SqlStore:
    """The engine and its dialect; `_run` does a repository's work in one transaction."""

    def __init__(self, engine: AsyncEngine) -> None:
        if engine.dialect.name not in ("postgresql", "sqlite"):
            raise ValueError(f"unsupported database: {engine.dialect.name}")
        self._engine = engine
        self._postgresql = engine.dialect.name == "postgresql"

    async def _run(
        self, work: Callable[[Transaction], Awaitable[_T]], *, conflict: str | None = None
    ) -> _T:
        """`work` in one committed transaction: a unit of work of a single step, so every
        repository shares its error mapping and its one retry (SqlUnitOfWork)."""
        async with SqlUnitOfWork(self._engine, conflict=conflict) as unit:
            result = await unit._run(work)
            await unit.commit()
        return result

    def _bytewise(self, column: sa.ColumnElement[str]) -> sa.ColumnElement[str]:
        """`column` compared like Python strings, whatever the PostgreSQL database's locale."""
        # The 0002 id columns have the database's default collation, unlike files.id.
        return column.collate("C") if self._postgresql else column


@dataclass
class Transaction:
    """One transaction's connection, noting which failures SqlUnitOfWork may retry."""

    connection: AsyncConnection
    # The error of the first statement when it found the connection dead: safe to retry.
    stale_error: DBAPIError | None = None
    _started: bool = False

    async def execute(
        self,
        statement: sa.Executable,
        parameters: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    ) -> _Result:
        """`statement`, with one set of parameters or (executemany) a sequence of them."""
        with self._first_statement():
            return await self.connection.execute(statement, parameters)

    async def execute_driver(self, statement: str, parameters: tuple[Any, ...]) -> _Result:
        """A statement in the driver's own syntax: no compiling, no cache key (hot paths)."""
        with self._first_statement():
            return await self.connection.exec_driver_sql(statement, parameters)

    async def run_sync(self, function: Callable[[sa.Connection], _T]) -> _T:
        with self._first_statement():
            return await self.connection.run_sync(function)

    @contextlib.contextmanager
    def _first_statement(self) -> Iterator[None]:
        first, self._started = not self._started, True
        try:
            yield
        except DBAPIError as error:
            if first and error.connection_invalidated:
                self.stale_error = error
            raise


class SqlUnitOfWork:
    """One transaction held open across the caller's steps: `async with` it, run its statements
    and the caller's own work, then `commit()`; leaving without committing rolls back.

    Driver failures are DependencyUnavailable, an integrity error Conflict(`conflict`) when
    given; whatever the caller's steps raise passes through unchanged (and rolls back). When the
    first statement finds its pooled connection dead (the database restarted or dropped it, and
    the pool could not tell), nothing was done yet: it runs once more, on a fresh connection.
    """

    def __init__(self, engine: AsyncEngine, *, conflict: str | None = None) -> None:
        self._engine = engine
        self._conflict = conflict
        self._connection: AsyncConnection | None = None
        self._tx: Transaction | None = None

    async def __aenter__(self) -> Self:
        await self._open()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._close()

    async def commit(self) -> None:
        assert self._connection is not None, "commit() outside `async with`"
        try:
            await self._connection.commit()
        except DRIVER_ERRORS as error:
            raise self._wrapped(error) from error

    async def _run(self, work: Callable[[Transaction], Awaitable[_T]]) -> _T:
        """A statement (or a few) of this unit of work."""
        tx = self._tx
        assert tx is not None, "a unit of work is used inside `async with`"
        first = not tx._started
        try:
            return await work(tx)
        except DRIVER_ERRORS as error:
            if not (first and error is tx.stale_error):
                raise self._wrapped(error) from error
        await self._close()
        await self._open()
        assert self._tx is not None
        try:
            return await work(self._tx)
        except DRIVER_ERRORS as error:
            raise self._wrapped(error) from error

    def _wrapped(self, error: BaseException) -> Exception:
        if self._conflict is not None and isinstance(error, IntegrityError):
            return Conflict(self._conflict)
        return database_unavailable(self._engine, error)

    async def _open(self) -> None:
        try:
            self._connection = await self._engine.connect()
            await self._connection.begin()
        except DRIVER_ERRORS as error:
            await self._close()
            raise database_unavailable(self._engine, error) from error
        self._tx = Transaction(self._connection)

    async def _close(self) -> None:
        """Roll back what was not committed and give the connection back."""
        connection, self._connection, self._tx = self._connection, None, None
        if connection is None:
            return
        # A dead connection: the pool replaces it, and nothing was committed.
        with contextlib.suppress(*DRIVER_ERRORS):
            await connection.close()


def utc(moment: datetime) -> datetime:
    """`moment` in UTC; a naive one already is (SQLite stores UTC and returns naive values)."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def storable(text: str) -> bool:
    """Whether a database can take `text` (no NUL, valid UTF-8); stored names always are."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return "\x00" not in text


def storable_text(text: str) -> str:
    """`text` as every database takes it: NUL and unpaired surrogates become U+FFFD."""
    if not text.isascii():
        text = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


def row_limit(limit: int) -> int:
    """A row limit every database takes: none below zero, none beyond BIGINT."""
    return max(0, min(limit, MAX_BIGINT))
