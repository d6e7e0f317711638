"""Audit entries written in batches, off the request path, and never dropped.

`record` queues the entry and returns; a background task writes what has queued up in one
statement every `flush_interval` seconds, or at once when `batch_size` entries wait. A batch
the database refuses stays queued and is tried again. Memory is bounded: past `max_pending`
entries, `record` raises DependencyUnavailable, so the request fails rather than going
unaudited. `query` and `flush` write everything queued first, and `aclose` (at shutdown) does
too. What a hard crash (SIGKILL, OOM) can lose is the last interval's entries, which are still
in the JSON log: each entry is logged as an "audit" event when it is queued.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Protocol

import structlog

from filewallball.adapters.sql import log_audit_event
from filewallball.domain.errors import DependencyUnavailable, FileWallBallError
from filewallball.domain.ports import AuditLog
from filewallball.domain.security import AuditEntry, AuditQuery

_log = structlog.get_logger("filewallball.audit")


class BatchAuditLog(AuditLog, Protocol):
    async def record_many(self, entries: Sequence[AuditEntry]) -> None:
        """Write every entry in one transaction: all or none."""
        ...


class BufferedAuditLog(AuditLog):
    def __init__(
        self,
        inner: BatchAuditLog,
        *,
        flush_interval: float = 0.1,
        batch_size: int = 500,
        max_pending: int = 100_000,
    ) -> None:
        self._inner = inner
        self._interval = flush_interval
        self._batch_size = batch_size
        self._max_pending = max_pending
        self._pending: list[AuditEntry] = []
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()  # one writer at a time keeps the entries in order
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._failing = False

    async def record(self, entry: AuditEntry) -> None:
        if self._closed:
            await self._inner.record(entry)
            return
        if len(self._pending) >= self._max_pending:
            raise DependencyUnavailable(
                "database", "the audit log is not being written; refusing unaudited work"
            )
        log_audit_event(entry)
        self._pending.append(entry)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        if len(self._pending) >= self._batch_size:
            self._wake.set()

    async def query(self, query: AuditQuery) -> list[AuditEntry]:
        await self.flush()
        return await self._inner.query(query)

    async def flush(self) -> None:
        """Write everything queued so far; DependencyUnavailable if the database refuses."""
        async with self._lock:
            while self._pending:
                batch = self._pending[: self._batch_size]
                await self._inner.record_many(batch)
                del self._pending[: len(batch)]

    async def aclose(self) -> None:
        """Stop the background writer and write what is left (best effort if the DB is down).

        The writer is told to stop, not cancelled: a batch cancelled in the middle of its
        transaction could leave the connection holding the database's write lock (SQLite), so
        the last flush below waited out the busy timeout and lost what was left.
        """
        self._closed = True
        if self._task is not None:
            self._wake.set()
            await self._task
            self._task = None
        try:
            await self.flush()
        except FileWallBallError as error:
            _log.error("audit_entries_lost", count=len(self._pending), reason=str(error))

    async def _run(self) -> None:
        while not self._closed:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._wake.wait()
            self._wake.clear()
            if self._closed:
                return  # aclose() writes what is left
            try:
                await self.flush()
            except FileWallBallError as error:
                if not self._failing:
                    _log.warning(
                        "audit_write_failed", pending=len(self._pending), reason=str(error)
                    )
                self._failing = True
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._interval):
                        await self._wake.wait()  # the retry's pause, cut short by aclose()
            else:
                if self._failing:
                    _log.info("audit_write_recovered")
                self._failing = False
