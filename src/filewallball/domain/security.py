"""Who may do what: API keys, roles and permissions, principals, IP rules, audit entries."""

from __future__ import annotations

import enum
import functools
import hashlib
import hmac
import ipaddress
import secrets
from dataclasses import dataclass, field
from datetime import datetime

from filewallball.domain.errors import AccessDenied, InvalidRequest
from filewallball.domain.models import FileRecord, Visibility, utc_instant

KEY_PREFIX = "fwb_"
_KEY_ID_BYTES = 6  # 12 hex characters (no "_", the separator): the public, indexed part
_SECRET_BYTES = 32  # 256 bits: the half that is never stored


class Permission(enum.StrEnum):
    FILES_WRITE = "files:write"
    FILES_READ = "files:read"  # own and public files
    FILES_READ_ALL = "files:read_all"
    FILES_DELETE = "files:delete"  # own files
    FILES_DELETE_ALL = "files:delete_all"
    ADMIN_KEYS = "admin:keys"
    ADMIN_IP_RULES = "admin:ip_rules"
    ADMIN_AUDIT = "admin:audit"
    STATS_READ = "stats:read"
    METRICS_READ = "metrics:read"


class Role(enum.StrEnum):
    ADMIN = "admin"
    UPLOADER = "uploader"
    READER = "reader"

    @property
    def permissions(self) -> frozenset[Permission]:
        return _ROLE_PERMISSIONS[self]


_ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.ADMIN: frozenset(Permission),
    Role.UPLOADER: frozenset(
        {Permission.FILES_WRITE, Permission.FILES_READ, Permission.FILES_DELETE}
    ),
    Role.READER: frozenset({Permission.FILES_READ}),
}


Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_network(cidr: str) -> Network:
    """A CIDR (or a bare address, as /32 or /128); InvalidRequest when it is neither."""
    try:
        return ipaddress.ip_network(cidr.strip(), strict=False)
    except ValueError as error:
        raise InvalidRequest(f"not a CIDR: {cidr!r}", code="invalid_cidr") from error


@functools.lru_cache(maxsize=4096)
def parse_address(raw: str) -> Address | None:
    """The IP address in `raw`, or None (remembered: each request parses its client's)."""
    try:
        address = ipaddress.ip_address(raw.strip())
    except ValueError:
        return None
    # An IPv4 client seen through an IPv6 socket is the IPv4 client for every rule.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def in_any(address: Address | None, networks: tuple[Network, ...]) -> bool:
    return address is not None and any(address in network for network in networks)


@dataclass(frozen=True, slots=True)
class IssuedKey:
    """A new key: the full secret (shown once) and what is stored of it."""

    key_id: str
    secret: str

    @classmethod
    def generate(cls) -> IssuedKey:
        key_id = secrets.token_hex(_KEY_ID_BYTES)
        return cls(
            key_id=key_id, secret=f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(_SECRET_BYTES)}"
        )

    @staticmethod
    def key_id_of(presented: str) -> str | None:
        """The id part of a presented key, or None when it is not shaped like one of ours."""
        if not presented.startswith(KEY_PREFIX):
            return None
        key_id, sep, secret = presented[len(KEY_PREFIX) :].partition("_")
        if not sep or len(key_id) != 12 or len(secret) < 43 or len(presented) > 128:
            return None
        return key_id


def hash_secret(secret: str, server_secret: bytes) -> str:
    """The keyed hash that is stored instead of a key (HMAC-SHA256 with the server secret)."""
    return hmac.new(server_secret, secret.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A stored API key: everything but the secret itself."""

    id: str
    name: str
    role: Role
    owner: str
    secret_hash: str
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None
    allowed_cidrs: tuple[str, ...] = ()
    quota_bytes: int | None = None
    quota_files: int | None = None

    def matches(self, presented: str, server_secret: bytes) -> bool:
        """Constant-time comparison of a presented key with the stored hash."""
        return hmac.compare_digest(hash_secret(presented, server_secret), self.secret_hash)

    def is_active(self, now: datetime) -> bool:
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or now < self.expires_at

    def allows(self, address: Address | None) -> bool:
        """Whether the key may be used from `address` (any address when no CIDRs are set)."""
        if not self.allowed_cidrs:
            return True
        return in_any(address, tuple(parse_network(c) for c in self.allowed_cidrs))


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller of one request."""

    key_id: str | None
    name: str
    role: Role | None
    owner: str | None
    client_ip: str | None = None
    request_id: str | None = None
    permissions: frozenset[Permission] = field(default_factory=frozenset)
    quota_bytes: int | None = None
    quota_files: int | None = None

    @classmethod
    def of_key(
        cls,
        key: ApiKey,
        client_ip: str | None,
        request_id: str | None = None,
        *,
        default_quota: tuple[int | None, int | None] = (None, None),
    ) -> Principal:
        """The caller behind `key`; the key's own quotas override its role's defaults."""
        return cls(
            quota_bytes=key.quota_bytes if key.quota_bytes is not None else default_quota[0],
            quota_files=key.quota_files if key.quota_files is not None else default_quota[1],
            key_id=key.id,
            name=key.name,
            role=key.role,
            owner=key.owner,
            client_ip=client_ip,
            request_id=request_id,
            permissions=key.role.permissions,
        )

    @classmethod
    def system(cls, name: str = "system") -> Principal:
        """An operator acting from the CLI or a background job: every permission."""
        return cls(
            key_id=None, name=name, role=Role.ADMIN, owner=None, permissions=frozenset(Permission)
        )

    def can(self, permission: Permission) -> bool:
        return permission in self.permissions

    def require(self, permission: Permission) -> None:
        if permission not in self.permissions:
            raise AccessDenied(
                f"the role {self.role or 'anonymous'} lacks the permission {permission}"
            )

    def can_see(self, record: FileRecord) -> bool:
        """Own files, public files, or everything with files:read_all."""
        if self.can(Permission.FILES_READ_ALL):
            return True
        if not self.can(Permission.FILES_READ):
            return False
        return record.visibility is Visibility.PUBLIC or (
            self.owner is not None and record.owner == self.owner
        )

    def can_delete(self, record: FileRecord) -> bool:
        if self.can(Permission.FILES_DELETE_ALL):
            return True
        return (
            self.can(Permission.FILES_DELETE)
            and self.owner is not None
            and record.owner == self.owner
        )


class RuleAction(enum.StrEnum):
    ALLOW = "allow"
    DENY = "deny"


@dataclass(frozen=True, slots=True)
class IpRule:
    id: str
    cidr: str
    action: RuleAction
    note: str | None
    created_at: datetime

    @property
    def network(self) -> Network:
        return parse_network(self.cidr)


@dataclass(frozen=True, slots=True)
class IpPolicy:
    """Deny rules win; when any allow rule exists, only the addresses it names get in."""

    allow: tuple[Network, ...] = ()
    deny: tuple[Network, ...] = ()

    @classmethod
    def of(
        cls, rules: list[IpRule], *, allow: tuple[str, ...] = (), deny: tuple[str, ...] = ()
    ) -> IpPolicy:
        return cls(
            allow=tuple(parse_network(c) for c in allow)
            + tuple(r.network for r in rules if r.action is RuleAction.ALLOW),
            deny=tuple(parse_network(c) for c in deny)
            + tuple(r.network for r in rules if r.action is RuleAction.DENY),
        )

    def permits(self, address: Address | None) -> bool:
        if in_any(address, self.deny):
            return False
        return not self.allow or in_any(address, self.allow)


class Outcome(enum.StrEnum):
    SUCCESS = "success"
    DENIED = "denied"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One line of the audit log: who did what to what, from where, and how it went."""

    at: datetime
    action: str  # e.g. "file.upload", "file.download", "key.create", "auth.denied"
    outcome: Outcome
    actor: str | None = None  # the key's name, or None for an unauthenticated caller
    key_id: str | None = None
    client_ip: str | None = None
    request_id: str | None = None
    target: str | None = None
    detail: str | None = None
    bytes: int | None = None  # moved by the action (an upload's size, a download's length)
    id: int | None = None  # assigned by the log


@dataclass(frozen=True, slots=True)
class AuditQuery:
    limit: int = 50
    cursor: int | None = None  # entries older than this id
    actor: str | None = None
    action: str | None = None
    target: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def __post_init__(self) -> None:
        for name, moment in (("since", self.since), ("until", self.until)):
            if moment is not None:
                try:
                    utc_instant(moment)
                except ValueError as error:
                    raise InvalidRequest(f"{name} {error}", code="invalid_datetime") from error
