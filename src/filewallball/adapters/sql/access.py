"""SqlKeyRepository and SqlIpRuleRepository: who may call, from `api_keys` and `ip_rules`."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from filewallball.adapters.sql.store import SqlStore, Transaction, row_limit, storable, utc
from filewallball.adapters.sql.tables import api_keys, ip_rules
from filewallball.domain.errors import InvalidRequest
from filewallball.domain.ports import IpRuleRepository, KeyRepository
from filewallball.domain.security import ApiKey, IpRule, Role, RuleAction


class SqlKeyRepository(SqlStore, KeyRepository):
    """API keys (their hashes, never their secrets) in the `api_keys` table."""

    async def add(self, key: ApiKey) -> None:
        row = _key_row(key)

        async def work(tx: Transaction) -> None:
            await tx.execute(api_keys.insert().values(row))

        await self._run(work, conflict=f"an API key with the id {key.id} exists")

    async def get(self, key_id: str) -> ApiKey | None:
        if not storable(key_id):
            return None

        async def work(tx: Transaction) -> sa.Row[Any] | None:
            return (
                await tx.execute(api_keys.select().where(api_keys.c.id == key_id))
            ).one_or_none()

        row = await self._run(work)
        return None if row is None else _to_key(row)

    async def list(self, *, limit: int, after: str | None = None) -> list[ApiKey]:
        by_id = self._bytewise(api_keys.c.id)
        statement = api_keys.select().order_by(by_id).limit(row_limit(limit))
        if after is not None:
            if not storable(after):
                raise InvalidRequest("the cursor is not valid", code="invalid_cursor")
            statement = statement.where(by_id > after)

        async def work(tx: Transaction) -> list[ApiKey]:
            return [_to_key(row) for row in await tx.execute(statement)]

        return await self._run(work)

    async def revoke(self, key_id: str, *, at: datetime) -> ApiKey | None:
        if not storable(key_id):
            return None
        # Only the first revocation sets the time: a repeated revoke leaves it as it was.
        unrevoked = (api_keys.c.id == key_id) & api_keys.c.revoked_at.is_(None)

        async def work(tx: Transaction) -> sa.Row[Any] | None:
            await tx.execute(api_keys.update().where(unrevoked).values(revoked_at=utc(at)))
            return (
                await tx.execute(api_keys.select().where(api_keys.c.id == key_id))
            ).one_or_none()

        row = await self._run(work)
        return None if row is None else _to_key(row)

    async def touch(self, key_id: str, *, at: datetime) -> None:
        if not storable(key_id):
            return
        moment = utc(at)
        # Concurrent requests finish in any order: the last use never moves back in time.
        later = api_keys.c.last_used_at.is_(None) | (api_keys.c.last_used_at < moment)
        statement = api_keys.update().where(api_keys.c.id == key_id, later)

        async def work(tx: Transaction) -> None:
            await tx.execute(statement.values(last_used_at=moment))

        await self._run(work)

    async def count(self) -> int:
        async def work(tx: Transaction) -> int:
            counted = await tx.execute(sa.select(sa.func.count()).select_from(api_keys))
            return int(counted.scalar_one())

        return await self._run(work)


class SqlIpRuleRepository(SqlStore, IpRuleRepository):
    """IP allow and deny rules in the `ip_rules` table."""

    async def add(self, rule: IpRule) -> None:
        row = {
            "id": rule.id,
            "cidr": rule.cidr,
            "action": rule.action.value,
            "note": rule.note,
            "created_at": utc(rule.created_at),
        }

        async def work(tx: Transaction) -> None:
            await tx.execute(ip_rules.insert().values(row))

        await self._run(work, conflict=f"an IP rule with the id {rule.id} exists")

    async def list(self) -> list[IpRule]:
        order = (ip_rules.c.created_at, self._bytewise(ip_rules.c.id))

        async def work(tx: Transaction) -> list[IpRule]:
            rows = await tx.execute(ip_rules.select().order_by(*order))
            return [
                IpRule(
                    id=row.id,
                    cidr=row.cidr,
                    action=RuleAction(row.action),
                    note=row.note,
                    created_at=utc(row.created_at),
                )
                for row in rows
            ]

        return await self._run(work)

    async def remove(self, rule_id: str) -> bool:
        if not storable(rule_id):
            return False

        async def work(tx: Transaction) -> bool:
            deleted = await tx.execute(ip_rules.delete().where(ip_rules.c.id == rule_id))
            return deleted.rowcount > 0

        return await self._run(work)


def _key_row(key: ApiKey) -> dict[str, Any]:
    return {
        "id": key.id,
        "name": key.name,
        "role": key.role.value,
        "owner": key.owner,
        "secret_hash": key.secret_hash,
        "created_at": utc(key.created_at),
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
        created_at=utc(row.created_at),
        expires_at=_utc_or_none(row.expires_at),
        revoked_at=_utc_or_none(row.revoked_at),
        last_used_at=_utc_or_none(row.last_used_at),
        allowed_cidrs=tuple(json.loads(row.allowed_cidrs)),
        quota_bytes=row.quota_bytes,
        quota_files=row.quota_files,
    )


def _utc_or_none(moment: datetime | None) -> datetime | None:
    return None if moment is None else utc(moment)
