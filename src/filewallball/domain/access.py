"""Access use cases: authenticate callers, manage API keys and IP rules, read the audit log."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping
from datetime import datetime, timedelta

from filewallball.domain.errors import (
    AccessDenied,
    Conflict,
    InvalidRequest,
    ResourceNotFound,
    Unauthenticated,
)
from filewallball.domain.models import has_control_characters, utc_instant
from filewallball.domain.policies import Quota
from filewallball.domain.ports import AuditLog, Clock, IpRuleRepository, KeyRepository
from filewallball.domain.security import (
    KEY_PREFIX,
    ApiKey,
    AuditEntry,
    AuditQuery,
    IpPolicy,
    IpRule,
    IssuedKey,
    Outcome,
    Permission,
    Principal,
    Role,
    RuleAction,
    hash_secret,
    parse_address,
    parse_network,
)

# last_used_at is a hint for operators, not a counter: one write a minute per key is enough.
_TOUCH_INTERVAL = timedelta(minutes=1)
_MAX_TOUCHED = 10_000
MAX_NAME_LENGTH = 128
MAX_NOTE_LENGTH = 500
_NOT_VALID = "the API key is not valid, revoked or expired"


class Auditor:
    """Writes audit entries stamped with the clock; one place for the entry's shape."""

    def __init__(self, *, log: AuditLog, clock: Clock) -> None:
        self._log = log
        self._clock = clock

    async def record(
        self,
        principal: Principal | None,
        action: str,
        outcome: Outcome,
        *,
        target: str | None = None,
        detail: str | None = None,
        client_ip: str | None = None,
        request_id: str | None = None,
        size: int | None = None,
    ) -> None:
        await self._log.record(
            AuditEntry(
                at=self._clock.now(),
                action=action,
                outcome=outcome,
                actor=principal.name if principal else None,
                key_id=principal.key_id if principal else None,
                client_ip=principal.client_ip if principal else client_ip,
                request_id=principal.request_id if principal else request_id,
                target=target,
                detail=detail,
                bytes=size,
            )
        )

    async def query(self, principal: Principal, query: AuditQuery) -> list[AuditEntry]:
        principal.require(Permission.ADMIN_AUDIT)
        return await self._log.query(query)


class AccessService:
    """Who is calling, and may they: keys, IP rules, roles."""

    def __init__(
        self,
        *,
        keys: KeyRepository,
        rules: IpRuleRepository,
        auditor: Auditor,
        clock: Clock,
        server_secret: bytes,
        static_allow: tuple[str, ...] = (),
        static_deny: tuple[str, ...] = (),
        rules_refresh_seconds: float = 5.0,
        role_quotas: Mapping[Role, Quota] | None = None,
    ) -> None:
        self._keys = keys
        self._rules = rules
        self._auditor = auditor
        self._clock = clock
        self._secret = server_secret
        self._static_allow = static_allow
        self._static_deny = static_deny
        self._refresh = rules_refresh_seconds
        self._role_quotas = dict(role_quotas or {})
        self._policy: IpPolicy | None = None
        self._policy_loaded = 0.0
        # When this process last recorded each key's use: a cached key's last_used_at lags.
        self._touched: dict[str, datetime] = {}

    async def authenticate(
        self, presented: str | None, *, client_ip: str | None, request_id: str | None
    ) -> Principal:
        """The principal behind a presented key; Unauthenticated or AccessDenied otherwise."""
        if not presented:
            raise Unauthenticated("an API key is required: Authorization: Bearer <key>")
        key_id = IssuedKey.key_id_of(presented)
        key = await self._keys.get(key_id) if key_id else None
        now = self._clock.now()
        # Hash even when the id is unknown, so timing does not tell which ids exist.
        # One detail for every refusal: it must not tell which key ids exist.
        if key is None:
            hash_secret(presented, self._secret)
            raise Unauthenticated(_NOT_VALID)
        if not key.matches(presented, self._secret) or not key.is_active(now):
            raise Unauthenticated(_NOT_VALID)
        if not key.allows(parse_address(client_ip or "")):
            raise AccessDenied("this API key may not be used from this address")
        last_used = max(filter(None, (key.last_used_at, self._touched.get(key.id))), default=None)
        if last_used is None or now - last_used > _TOUCH_INTERVAL:
            if len(self._touched) >= _MAX_TOUCHED:
                self._touched.clear()
            self._touched[key.id] = now
            await self._keys.touch(key.id, at=now)
        quota = self._role_quotas.get(key.role, Quota())
        return Principal.of_key(
            key, client_ip, request_id, default_quota=(quota.bytes, quota.files)
        )

    async def check_address(self, client_ip: str | None) -> None:
        """AccessDenied unless the IP rules (settings and database) let the address in."""
        policy = await self._current_policy()
        if not policy.permits(parse_address(client_ip or "")):
            raise AccessDenied("requests from this address are not allowed")

    async def _current_policy(self) -> IpPolicy:
        # Rules change rarely and are read on every request: each process re-reads them every
        # few seconds, so a change reaches every replica within `rules_refresh_seconds`.
        if self._policy is None or time.monotonic() - self._policy_loaded > self._refresh:
            rules = await self._rules.list()
            self._policy = IpPolicy.of(rules, allow=self._static_allow, deny=self._static_deny)
            self._policy_loaded = time.monotonic()
        return self._policy

    async def create_key(
        self,
        principal: Principal,
        *,
        name: str,
        role: Role,
        owner: str | None = None,
        expires_at: datetime | None = None,
        allowed_cidrs: tuple[str, ...] = (),
        quota_bytes: int | None = None,
        quota_files: int | None = None,
    ) -> tuple[ApiKey, str]:
        """A new key and its secret, which is shown this once and never stored."""
        principal.require(Permission.ADMIN_KEYS)
        # Names and owners are shown in logs, listings and the audit trail, and PostgreSQL
        # cannot store NUL: refused, not cleaned, so what is stored is what the admin typed.
        for field, text in (("name", name), ("owner", owner or "")):
            if has_control_characters(text):
                raise InvalidRequest(
                    f"a key {field} cannot hold control characters", code=f"invalid_{field}"
                )
        name = name.strip()
        if not name or len(name) > MAX_NAME_LENGTH:
            raise InvalidRequest(
                f"a key name has 1 to {MAX_NAME_LENGTH} characters", code="invalid_name"
            )
        now = self._clock.now()
        if expires_at is not None:
            try:
                utc_instant(expires_at)
            except ValueError as error:
                raise InvalidRequest(f"expires_at {error}", code="invalid_expiry") from error
            if expires_at <= now:
                raise InvalidRequest("expires_at is in the past", code="invalid_expiry")
        cidrs = tuple(str(parse_network(c)) for c in allowed_cidrs)
        issued = IssuedKey.generate()
        key = ApiKey(
            id=issued.key_id,
            name=name,
            role=role,
            owner=(owner or name).strip()[:MAX_NAME_LENGTH],
            secret_hash=hash_secret(issued.secret, self._secret),
            created_at=now,
            expires_at=expires_at,
            allowed_cidrs=cidrs,
            quota_bytes=quota_bytes,
            quota_files=quota_files,
        )
        await self._keys.add(key)
        await self._auditor.record(
            principal, "key.create", Outcome.SUCCESS, target=key.id, detail=role.value
        )
        return key, issued.secret

    async def list_keys(
        self, principal: Principal, *, limit: int, after: str | None
    ) -> list[ApiKey]:
        principal.require(Permission.ADMIN_KEYS)
        return await self._keys.list(limit=limit, after=after)

    async def revoke_key(self, principal: Principal, key_id: str) -> ApiKey:
        principal.require(Permission.ADMIN_KEYS)
        key = await self._keys.revoke(key_id, at=self._clock.now())
        if key is None:
            raise ResourceNotFound(f"no API key {key_id!r}")
        await self._auditor.record(principal, "key.revoke", Outcome.SUCCESS, target=key_id)
        return key

    async def bootstrap(self, *, preset: str | None) -> str | None:
        """Create the first admin key when none exists; its secret, or None when keys exist.

        `preset` (FWB_BOOTSTRAP_ADMIN_KEY) becomes the key when given, else one is generated.
        """
        if await self._keys.count() > 0:
            return None
        secret = preset or self._bootstrap_secret()
        key_id = IssuedKey.key_id_of(secret)
        if key_id is None:
            raise InvalidRequest(
                "FWB_BOOTSTRAP_ADMIN_KEY must look like fwb_<12 characters>_<43+ characters>",
                code="invalid_bootstrap_key",
            )
        key = ApiKey(
            id=key_id,
            name="bootstrap-admin",
            role=Role.ADMIN,
            owner="admin",
            secret_hash=hash_secret(secret, self._secret),
            created_at=self._clock.now(),
        )
        try:
            await self._keys.add(key)
        except Conflict:
            return None  # another worker or replica, starting alongside, made it first
        await self._auditor.record(
            Principal.system(), "key.bootstrap", Outcome.SUCCESS, target=key.id
        )
        return secret

    def _bootstrap_secret(self) -> str:
        """A new admin key whose id is the same in every process of this installation.

        Workers and replicas that start together each find no key: they all try to insert the
        same id, so the primary key lets exactly one of them win. The id is derived from the
        server secret (which they share), so it is not guessable; the rest is random.
        """
        issued = IssuedKey.generate()
        digest = hmac.new(self._secret, b"filewallball bootstrap admin key", hashlib.sha256)
        key_id = digest.hexdigest()[: len(issued.key_id)]
        random_part = issued.secret.removeprefix(f"{KEY_PREFIX}{issued.key_id}_")
        return f"{KEY_PREFIX}{key_id}_{random_part}"

    async def add_ip_rule(
        self, principal: Principal, *, cidr: str, action: RuleAction, note: str | None
    ) -> IpRule:
        principal.require(Permission.ADMIN_IP_RULES)
        if note and has_control_characters(note, allowed="\t\n"):
            raise InvalidRequest(
                "a note cannot hold control characters other than tabs and newlines",
                code="invalid_note",
            )
        rule = IpRule(
            id=secrets.token_urlsafe(12),
            cidr=str(parse_network(cidr)),
            action=action,
            note=(note or None) and note[:MAX_NOTE_LENGTH],
            created_at=self._clock.now(),
        )
        await self._rules.add(rule)
        self._policy = None  # this process sees the change at once; others within seconds
        await self._auditor.record(
            principal,
            "ip_rule.create",
            Outcome.SUCCESS,
            target=rule.id,
            detail=f"{action} {rule.cidr}",
        )
        return rule

    async def list_ip_rules(self, principal: Principal) -> list[IpRule]:
        principal.require(Permission.ADMIN_IP_RULES)
        return await self._rules.list()

    async def remove_ip_rule(self, principal: Principal, rule_id: str) -> None:
        principal.require(Permission.ADMIN_IP_RULES)
        if not await self._rules.remove(rule_id):
            raise ResourceNotFound(f"no IP rule {rule_id!r}")
        self._policy = None
        await self._auditor.record(principal, "ip_rule.delete", Outcome.SUCCESS, target=rule_id)
