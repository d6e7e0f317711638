"""SQL adapters for who may do what: API keys, IP rules, the audit log and per-owner usage."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from filewallball.adapters.sql.file_records import _DRIVER_ERRORS, _storable, _utc, files, metadata
from filewallball.domain.errors import Conflict, DependencyUnavailable, InvalidRequest
from filewallball.domain.ports import (
    AuditLog,
    IpRuleRepository,
    KeyRepository,
    StorageTotals,
    UsageRepository,
)
from filewallball.domain.security import (
    ApiKey,
    AuditEntry,
    AuditQuery,
    IpRule,
    Outcome,
    Role,
    RuleAction,
)

_MAX_BIGINT = 2**63 - 1

# Mirror migrations/versions/0002_security.py; the migrations, not this metadata, create the schema.
api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(16), primary_key=True),
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("owner", sa.String(128), nullable=False),
    sa.Column("secret_hash", sa.String(64), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("allowed_cidrs", sa.Text, nullable=False),  # JSON array of CIDR strings
    sa.Column("quota_bytes", sa.BigInteger, nullable=True),
    sa.Column("quota_files", sa.BigInteger, nullable=True),
)

ip_rules = sa.Table(
    "ip_rules",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("cidr", sa.String(64), nullable=False),
    sa.Column("action", sa.String(8), nullable=False),
    sa.Column("note", sa.Text, nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

audit_log = sa.Table(
    "audit_log",
    metadata,
    # INTEGER PRIMARY KEY is SQLite's rowid: autoincrementing, unlike BIGINT there.
    sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer, "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("actor", sa.String(128), nullable=True),
    sa.Column("key_id", sa.String(16), nullable=True),
    sa.Column("client_ip", sa.String(64), nullable=True),
    sa.Column("request_id", sa.String(128), nullable=True),
    sa.Column("target", sa.String(255), nullable=True),
    sa.Column("detail", sa.Text, nullable=True),
    sa.Column("bytes", sa.BigInteger, nullable=True),
    sa.Index("ix_audit_log_at", "at"),
    sa.Index("ix_audit_log_actor_id", "actor", "id"),
    sa.Index("ix_audit_log_action_id", "action", "id"),
    sa.Index("ix_audit_log_target_id", "target", "id"),
)


class _SqlStore:
    """The engine, and one committed transaction per call."""

    def __init__(self, engine: AsyncEngine) -> None:
        if engine.dialect.name not in ("postgresql", "sqlite"):
            raise ValueError(f"unsupported database: {engine.dialect.name}")
        self._engine = engine
        self._postgresql = engine.dialect.name == "postgresql"

    @contextlib.asynccontextmanager
    async def _transaction(self, *, conflict: str | None = None) -> AsyncIterator[AsyncConnection]:
        """Driver failures become DependencyUnavailable; a duplicate id Conflict(`conflict`)."""
        try:
            async with self._engine.begin() as connection:
                yield connection
        except IntegrityError as error:
            if conflict is not None:
                raise Conflict(conflict) from error
            raise DependencyUnavailable("database") from error
        except _DRIVER_ERRORS as error:
            raise DependencyUnavailable("database") from error

    def _bytewise(self, column: sa.ColumnElement[str]) -> sa.ColumnElement[str]:
        """`column` compared like Python strings, whatever the PostgreSQL database's locale."""
        # The 0002 id columns have the database's default collation, unlike files.id.
        return column.collate("C") if self._postgresql else column


class SqlKeyRepository(_SqlStore, KeyRepository):
    """API keys (their hashes, never their secrets) in the `api_keys` table."""

    async def add(self, key: ApiKey) -> None:
        async with self._transaction(conflict=f"an API key with the id {key.id} exists") as tx:
            await tx.execute(api_keys.insert().values(_key_row(key)))

    async def get(self, key_id: str) -> ApiKey | None:
        if not _storable(key_id):
            return None
        async with self._transaction() as tx:
            row = (await tx.execute(api_keys.select().where(api_keys.c.id == key_id))).one_or_none()
        return None if row is None else _to_key(row)

    async def list(self, *, limit: int, after: str | None = None) -> list[ApiKey]:
        by_id = self._bytewise(api_keys.c.id)
        statement = api_keys.select().order_by(by_id).limit(_limit(limit))
        if after is not None:
            if not _storable(after):
                raise InvalidRequest("the cursor is not valid", code="invalid_cursor")
            statement = statement.where(by_id > after)
        async with self._transaction() as tx:
            return [_to_key(row) for row in await tx.execute(statement)]

    async def revoke(self, key_id: str, *, at: datetime) -> ApiKey | None:
        if not _storable(key_id):
            return None
        # Only the first revocation sets the time: a repeated revoke leaves it as it was.
        unrevoked = (api_keys.c.id == key_id) & api_keys.c.revoked_at.is_(None)
        async with self._transaction() as tx:
            await tx.execute(api_keys.update().where(unrevoked).values(revoked_at=_utc(at)))
            row = (await tx.execute(api_keys.select().where(api_keys.c.id == key_id))).one_or_none()
        return None if row is None else _to_key(row)

    async def touch(self, key_id: str, *, at: datetime) -> None:
        if not _storable(key_id):
            return
        moment = _utc(at)
        # Concurrent requests finish in any order: the last use never moves back in time.
        later = api_keys.c.last_used_at.is_(None) | (api_keys.c.last_used_at < moment)
        async with self._transaction() as tx:
            await tx.execute(
                api_keys.update().where(api_keys.c.id == key_id, later).values(last_used_at=moment)
            )

    async def count(self) -> int:
        async with self._transaction() as tx:
            counted = await tx.execute(sa.select(sa.func.count()).select_from(api_keys))
            return int(counted.scalar_one())


class SqlIpRuleRepository(_SqlStore, IpRuleRepository):
    """IP allow and deny rules in the `ip_rules` table."""

    async def add(self, rule: IpRule) -> None:
        row = {
            "id": rule.id,
            "cidr": rule.cidr,
            "action": rule.action.value,
            "note": rule.note,
            "created_at": _utc(rule.created_at),
        }
        async with self._transaction(conflict=f"an IP rule with the id {rule.id} exists") as tx:
            await tx.execute(ip_rules.insert().values(row))

    async def list(self) -> list[IpRule]:
        order = (ip_rules.c.created_at, self._bytewise(ip_rules.c.id))
        async with self._transaction() as tx:
            rows = await tx.execute(ip_rules.select().order_by(*order))
            return [
                IpRule(
                    id=row.id,
                    cidr=row.cidr,
                    action=RuleAction(row.action),
                    note=row.note,
                    created_at=_utc(row.created_at),
                )
                for row in rows
            ]

    async def remove(self, rule_id: str) -> bool:
        if not _storable(rule_id):
            return False
        async with self._transaction() as tx:
            deleted = await tx.execute(ip_rules.delete().where(ip_rules.c.id == rule_id))
            return deleted.rowcount > 0


class SqlAuditLog(_SqlStore, AuditLog):
    """The audit trail in the `audit_log` table, each entry also logged as an "audit" event."""

    async def record(self, entry: AuditEntry) -> None:
        row = _audit_row(entry)
        try:
            async with self._transaction() as tx:
                inserted = audit_log.insert().values(row).returning(audit_log.c.id)
                entry = replace(entry, id=(await tx.execute(inserted)).scalar_one())
        finally:
            # Logged even when the database is down (then with no id): the trail survives there.
            log_audit_event(entry)

    async def record_many(self, entries: Sequence[AuditEntry]) -> None:
        """Insert the entries in one statement and transaction (not logged: the caller does)."""
        if not entries:
            return
        async with self._transaction() as tx:
            await tx.execute(audit_log.insert(), [_audit_row(entry) for entry in entries])

    async def flush(self) -> None:
        return None  # every entry is written when recorded

    async def query(self, query: AuditQuery) -> list[AuditEntry]:
        conditions = _audit_conditions(query)
        if conditions is None:
            return []
        statement = (
            audit_log.select()
            .where(*conditions)
            .order_by(audit_log.c.id.desc())
            .limit(_limit(query.limit))
        )
        async with self._transaction() as tx:
            return [
                AuditEntry(
                    id=row.id,
                    at=_utc(row.at),
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


class SqlUsageRepository(_SqlStore, UsageRepository):
    """What each owner stores, summed from the `files` table."""

    async def stored_by(self, owner: str) -> tuple[int, int]:
        if not _storable(owner):
            return 0, 0
        totals = sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(files.c.size), 0))
        async with self._transaction() as tx:
            count, size = (await tx.execute(totals.where(files.c.owner == owner))).one()
        # PostgreSQL sums a BIGINT column as NUMERIC (a Decimal).
        return int(count), int(size)

    async def totals(self) -> StorageTotals:
        logical = sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(files.c.size), 0))
        # Distinct contents: the bytes the blob store really holds (deduplicated).
        distinct = (
            sa.select(files.c.sha256, sa.func.max(files.c.size).label("size"))
            .group_by(files.c.sha256)
            .subquery()
        )
        stored = sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(distinct.c.size), 0))
        async with self._transaction() as tx:
            count, size = (await tx.execute(logical)).one()
            blob_count, blob_bytes = (await tx.execute(stored)).one()
        return StorageTotals(
            files=int(count),
            logical_bytes=int(size),
            blobs=int(blob_count),
            stored_bytes=int(blob_bytes),
        )


_AUDIT_FIELDS = tuple(field.name for field in dataclasses.fields(AuditEntry))


def _fields(entry: AuditEntry) -> dict[str, Any]:
    # Its fields are plain values: asdict's deep copy of each cost a download 10 % of its CPU.
    return {name: getattr(entry, name) for name in _AUDIT_FIELDS}


def log_audit_event(entry: AuditEntry) -> None:
    """The entry as an "audit" JSON log event, every field included."""
    fields = {**_fields(entry), "at": _utc(entry.at).isoformat(), "outcome": entry.outcome.value}
    # Looked up each time: a module-level logger keeps the configuration of its first use.
    structlog.get_logger("filewallball.audit").info("audit", **fields)


def _audit_row(entry: AuditEntry) -> dict[str, Any]:
    row = {**_fields(entry), "at": _utc(entry.at), "outcome": entry.outcome.value}
    del row["id"]  # the database numbers the entries
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
            if not _storable(value):
                return None
            conditions.append(column == value)
    if query.since is not None:
        conditions.append(audit_log.c.at >= _utc(query.since))
    if query.until is not None:
        conditions.append(audit_log.c.at < _utc(query.until))
    if query.cursor is not None:
        if query.cursor <= 1:  # ids start at 1
            return None
        # Clamped: a forged cursor beyond BIGINT must not reach PostgreSQL as an error.
        conditions.append(audit_log.c.id < min(query.cursor, _MAX_BIGINT))
    return conditions


def _limit(limit: int) -> int:
    """A row limit every database takes: none below zero, none beyond BIGINT."""
    return max(0, min(limit, _MAX_BIGINT))


def _key_row(key: ApiKey) -> dict[str, Any]:
    return {
        "id": key.id,
        "name": key.name,
        "role": key.role.value,
        "owner": key.owner,
        "secret_hash": key.secret_hash,
        "created_at": _utc(key.created_at),
        "expires_at": _utc_or_none(key.expires_at),
        "revoked_at": _utc_or_none(key.revoked_at),
        "last_used_at": _utc_or_none(key.last_used_at),
        "allowed_cidrs": json.dumps(list(key.allowed_cidrs)),
        "quota_bytes": key.quota_bytes,
        "quota_files": key.quota_files,
    }


def _to_key(row: sa.Row[Any]) -> ApiKey:
    return ApiKey(
        id=row.id,
        name=row.name,
        role=Role(row.role),
        owner=row.owner,
        secret_hash=row.secret_hash,
        created_at=_utc(row.created_at),
        expires_at=_utc_or_none(row.expires_at),
        revoked_at=_utc_or_none(row.revoked_at),
        last_used_at=_utc_or_none(row.last_used_at),
        allowed_cidrs=tuple(json.loads(row.allowed_cidrs)),
        quota_bytes=row.quota_bytes,
        quota_files=row.quota_files,
    )


def _utc_or_none(moment: datetime | None) -> datetime | None:
    return None if moment is None else _utc(moment)
