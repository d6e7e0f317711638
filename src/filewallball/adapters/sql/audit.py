"""SqlAuditLog: the audit trail in the `audit_log` table, each entry also a JSON log event."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import sqlalchemy as sa
import structlog

from filewallball.adapters.sql.store import (
    MAX_BIGINT,
    SqlStore,
    Transaction,
    row_limit,
    storable,
    storable_text,
    utc,
)
from filewallball.adapters.sql.tables import audit_log
from filewallball.domain.ports import AuditLog
from filewallball.domain.security import AuditEntry, AuditQuery, Outcome

_AUDIT_FIELDS = tuple(field.name for field in dataclasses.fields(AuditEntry))
# What a client can put in an entry: a target is the request's path, which it can fill with NUL
# ("/files/%00"); one entry PostgreSQL refuses would hold back its batch and every one after it.
_CLIENT_TEXT = ("actor", "client_ip", "target", "detail")


class SqlAuditLog(SqlStore, AuditLog):
    """The audit trail in the `audit_log` table, each entry also logged as an "audit" event."""

    async def record(self, entry: AuditEntry) -> None:
        inserted = audit_log.insert().values(_audit_row(entry)).returning(audit_log.c.id)

        async def work(tx: Transaction) -> int:
            entry_id: int = (await tx.execute(inserted)).scalar_one()
            return entry_id

        try:
            entry = replace(entry, id=await self._run(work))
        finally:
            # Logged even when the database is down (then with no id): the trail survives there.
            log_audit_event(entry)

    async def record_many(self, entries: Sequence[AuditEntry]) -> None:
        """Insert the entries in one statement and transaction (not logged: the caller does)."""
        if not entries:
            return
        rows = [_audit_row(entry) for entry in entries]

        async def work(tx: Transaction) -> None:
            await tx.execute(audit_log.insert(), rows)

        await self._run(work)

    async def flush(self) -> None:
        return None  # every entry is written when recorded

    async def aclose(self) -> None:
        return None  # nothing is queued; the engine is closed with the container

    async def query(self, query: AuditQuery) -> list[AuditEntry]:
        conditions = _audit_conditions(query)
        if conditions is None:
            return []
        statement = (
            audit_log.select()
            .where(*conditions)
            .order_by(audit_log.c.id.desc())
            .limit(row_limit(query.limit))
        )

        async def work(tx: Transaction) -> list[AuditEntry]:
            return [
                AuditEntry(
                    id=row.id,
                    at=utc(row.at),
                    action=row.action,
                    outcome=Outcome(row.outcome),
                    actor=row.actor,
                    key_id=row.key_id,
                    client_ip=row.client_ip,
                    request_id=row.request_id,
                    target=row.target,
                    detail=row.detail,
                    bytes=row.bytes,
                )
                for row in await tx.execute(statement)
            ]

        return await self._run(work)


def log_audit_event(entry: AuditEntry) -> None:
    """The entry as an "audit" JSON log event, every field included."""
    fields = {**_fields(entry), "at": utc(entry.at).isoformat(), "outcome": entry.outcome.value}
    # Looked up each time: a module-level logger keeps the configuration of its first use.
    structlog.get_logger("filewallball.audit").info("audit", **fields)


def _fields(entry: AuditEntry) -> dict[str, Any]:
    # Its fields are plain values: asdict's deep copy of each cost a download 10 % of its CPU.
    return {name: getattr(entry, name) for name in _AUDIT_FIELDS}


def _audit_row(entry: AuditEntry) -> dict[str, Any]:
    row = {**_fields(entry), "at": utc(entry.at), "outcome": entry.outcome.value}
    del row["id"]  # the database numbers the entries
    for name in _CLIENT_TEXT:
        if (value := row[name]) is not None:
            row[name] = storable_text(value)
    return row


def _audit_conditions(query: AuditQuery) -> list[sa.ColumnElement[bool]] | None:
    """The query's filters; None when no stored entry can match them."""
    conditions: list[sa.ColumnElement[bool]] = []
    exact = (
        (audit_log.c.actor, query.actor),
        (audit_log.c.action, query.action),
        (audit_log.c.target, query.target),
    )
    for column, value in exact:
        if value is not None:
            if not storable(value):
                return None
            conditions.append(column == value)
    if query.since is not None:
        conditions.append(audit_log.c.at >= utc(query.since))
    if query.until is not None:
        conditions.append(audit_log.c.at < utc(query.until))
    if query.cursor is not None:
        if query.cursor <= 1:  # ids start at 1
            return None
        # Clamped: a forged cursor beyond BIGINT must not reach PostgreSQL as an error.
        conditions.append(audit_log.c.id < min(query.cursor, MAX_BIGINT))
    return conditions
