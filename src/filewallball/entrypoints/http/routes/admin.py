"""Administration: API keys, IP rules and the audit log (admin role only)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import Query, Response
from pydantic import AwareDatetime, BaseModel, Field

from filewallball.domain.models import MAX_STORED_INT
from filewallball.domain.security import ApiKey, AuditEntry, AuditQuery, IpRule, Role, RuleAction
from filewallball.entrypoints.http.deps import Access, Audit, Caller
from filewallball.entrypoints.http.openapi import problems
from filewallball.entrypoints.http.routes import Router

_PROBLEMS = problems(400, 401, 403, 404)
router = Router(prefix="/admin", tags=["admin"], responses=_PROBLEMS)


class KeyIn(BaseModel):
    name: str = Field(min_length=1, max_length=128)
    role: Role
    owner: str | None = Field(
        default=None,
        max_length=128,
        description="Whose files the key uploads and sees; default: name",
    )
    expires_at: AwareDatetime | None = None
    allowed_cidrs: list[str] = Field(default=[], max_length=100)
    quota_bytes: int | None = Field(
        default=None, ge=0, le=MAX_STORED_INT, description="Overrides the role default"
    )
    quota_files: int | None = Field(
        default=None, ge=0, le=MAX_STORED_INT, description="Overrides the role default"
    )


class KeyOut(BaseModel):
    id: str
    name: str
    role: Role
    owner: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    allowed_cidrs: list[str]
    quota_bytes: int | None
    quota_files: int | None

    @classmethod
    def of(cls, key: ApiKey) -> KeyOut:
        return cls(
            id=key.id,
            name=key.name,
            role=key.role,
            owner=key.owner,
            created_at=key.created_at,
            expires_at=key.expires_at,
            revoked_at=key.revoked_at,
            last_used_at=key.last_used_at,
            allowed_cidrs=list(key.allowed_cidrs),
            quota_bytes=key.quota_bytes,
            quota_files=key.quota_files,
        )


class CreatedKey(KeyOut):
    key: str = Field(description="The secret: shown this once, never again")


class KeyList(BaseModel):
    items: list[KeyOut]
    next_cursor: str | None


class RuleIn(BaseModel):
    cidr: str = Field(max_length=64, examples=["10.0.0.0/8", "2001:db8::/32"])
    action: RuleAction
    note: str | None = Field(default=None, max_length=500)


class RuleOut(BaseModel):
    id: str
    cidr: str
    action: RuleAction
    note: str | None
    created_at: datetime

    @classmethod
    def of(cls, rule: IpRule) -> RuleOut:
        return cls(
            id=rule.id,
            cidr=rule.cidr,
            action=rule.action,
            note=rule.note,
            created_at=rule.created_at,
        )


class RuleList(BaseModel):
    items: list[RuleOut]
    next_cursor: str | None = None


class AuditOut(BaseModel):
    id: int
    at: datetime
    action: str
    outcome: str
    actor: str | None
    key_id: str | None
    client_ip: str | None
    request_id: str | None
    target: str | None
    detail: str | None

    @classmethod
    def of(cls, entry: AuditEntry) -> AuditOut:
        assert entry.id is not None
        return cls(
            id=entry.id,
            at=entry.at,
            action=entry.action,
            outcome=entry.outcome.value,
            actor=entry.actor,
            key_id=entry.key_id,
            client_ip=entry.client_ip,
            request_id=entry.request_id,
            target=entry.target,
            detail=entry.detail,
        )


class AuditList(BaseModel):
    items: list[AuditOut]
    next_cursor: str | None


@router.post("/keys", status_code=201, response_model=CreatedKey)
async def create_key(body: KeyIn, access: Access, caller: Caller) -> CreatedKey:
    key, secret = await access.create_key(
        caller,
        name=body.name,
        role=body.role,
        owner=body.owner,
        expires_at=body.expires_at,
        allowed_cidrs=tuple(body.allowed_cidrs),
        quota_bytes=body.quota_bytes,
        quota_files=body.quota_files,
    )
    return CreatedKey(**KeyOut.of(key).model_dump(), key=secret)


@router.get("/keys", response_model=KeyList)
async def list_keys(
    access: Access,
    caller: Caller,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
) -> KeyList:
    keys = await access.list_keys(caller, limit=limit + 1, after=cursor)
    page = keys[:limit]
    return KeyList(
        items=[KeyOut.of(k) for k in page], next_cursor=page[-1].id if len(keys) > limit else None
    )


@router.delete("/keys/{key_id}", status_code=204)
async def revoke_key(key_id: str, access: Access, caller: Caller) -> Response:
    await access.revoke_key(caller, key_id)
    return Response(status_code=204)


@router.post("/ip-rules", status_code=201, response_model=RuleOut)
async def add_ip_rule(body: RuleIn, access: Access, caller: Caller) -> RuleOut:
    rule = await access.add_ip_rule(caller, cidr=body.cidr, action=body.action, note=body.note)
    return RuleOut.of(rule)


@router.get("/ip-rules", response_model=RuleList)
async def list_ip_rules(access: Access, caller: Caller) -> RuleList:
    return RuleList(items=[RuleOut.of(r) for r in await access.list_ip_rules(caller)])


@router.delete("/ip-rules/{rule_id}", status_code=204)
async def remove_ip_rule(rule_id: str, access: Access, caller: Caller) -> Response:
    await access.remove_ip_rule(caller, rule_id)
    return Response(status_code=204)


@router.get("/audit", response_model=AuditList)
async def list_audit_entries(
    audit: Audit,
    caller: Caller,
    actor: Annotated[str | None, Query(max_length=128)] = None,
    action: Annotated[str | None, Query(max_length=64)] = None,
    target: Annotated[str | None, Query(max_length=255)] = None,
    since: AwareDatetime | None = None,
    until: AwareDatetime | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    cursor: Annotated[int | None, Query(ge=1, le=MAX_STORED_INT)] = None,
) -> AuditList:
    query = AuditQuery(
        limit=limit + 1,
        cursor=cursor,
        actor=actor,
        action=action,
        target=target,
        since=since,
        until=until,
    )
    entries = await audit.query(caller, query)
    page = entries[:limit]
    next_cursor = str(page[-1].id) if len(entries) > limit and page[-1].id is not None else None
    return AuditList(items=[AuditOut.of(e) for e in page], next_cursor=next_cursor)
