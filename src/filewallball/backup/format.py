"""The archive format: member names, kinds and size limits; header and manifest, read strictly."""

# An archive is a tar (gzip-compressed when its name ends in .gz) whose members come in this order:
#
#     header.json          format, version, source, schema revision, server-secret fingerprint
#     blobs/<sha256>       every blob the metadata references; its name is the SHA-256 of its bytes
#     tables/<t>.jsonl     one JSON object per row, per table (ISO 8601 UTC date-times)
#     blob-index.jsonl     {"sha256", "size"} of every blobs/ member
#     skipped.jsonl        files left out because their bytes vanished during the backup
#     secret.key           the generated server secret (only when the source had no FWB_SECRET_KEY)
#     manifest.json        the header again, row counts, and the size and SHA-256 of every member
#                          above that is not a blob (blobs are named by their SHA-256 and listed,
#                          with their sizes, in blob-index.jsonl, which the manifest sums in turn)
#
# The manifest comes last, so an archive cut short anywhere lacks it and is refused; the header
# comes first, so a restore can refuse an unusable archive before reading gigabytes of blobs.

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from filewallball.domain.errors import FileWallBallError
from filewallball.secret_file import FoundSecret, SecretSource

FORMAT = "filewallball-backup"
FORMAT_VERSION = 1

HEADER = "header.json"
MANIFEST = "manifest.json"
BLOB_INDEX = "blob-index.jsonl"
SKIPPED = "skipped.jsonl"
SECRET = "secret.key"  # noqa: S105 (a member's name, not a secret)
BLOB_PREFIX = "blobs/"
# In the order a restore inserts them: files reference blobs.
TABLES = ("blobs", "files", "api_keys", "ip_rules", "audit_log")

MAX_HEADER_BYTES = 64 * 1024
MAX_MANIFEST_BYTES = 1024 * 1024
MAX_SECRET_BYTES = 4096
# Members pass through in chunks of this size, hashed on the way: none is ever held whole.
CHUNK_BYTES = 256 * 1024
_HEX64 = re.compile(r"[0-9a-f]{64}")


class BackupError(FileWallBallError):
    """A backup cannot be made, or an archive is unusable: the detail says what and where."""

    code = "backup_failed"


class MemberKind(enum.Enum):
    HEADER = "header"
    BLOB = "blob"
    TABLE = "table"
    BLOB_INDEX = "blob_index"
    SKIPPED = "skipped"
    SECRET = "secret"  # noqa: S105 (a member kind, not a secret)
    MANIFEST = "manifest"

    @property
    def max_bytes(self) -> int | None:
        """The largest member of this kind a reader accepts; None: streamed, never held whole."""
        return {
            MemberKind.HEADER: MAX_HEADER_BYTES,
            MemberKind.MANIFEST: MAX_MANIFEST_BYTES,
            MemberKind.SECRET: MAX_SECRET_BYTES,
        }.get(self)


def table_member(table: str) -> str:
    return f"tables/{table}.jsonl"


def blob_member(sha256: str) -> str:
    return f"{BLOB_PREFIX}{sha256}"


_FIXED_MEMBERS = {
    HEADER: MemberKind.HEADER,
    MANIFEST: MemberKind.MANIFEST,
    BLOB_INDEX: MemberKind.BLOB_INDEX,
    SKIPPED: MemberKind.SKIPPED,
    SECRET: MemberKind.SECRET,
    **{table_member(table): MemberKind.TABLE for table in TABLES},
}


def classify(name: str) -> MemberKind:
    """The kind of a member, from its exact name; BackupError for a name the format lacks.

    Only these exact names pass, so no member can point outside a staging area: there is no
    `..`, no absolute path and no other directory among them.
    """
    if name.startswith(BLOB_PREFIX) and _HEX64.fullmatch(name[len(BLOB_PREFIX) :]):
        return MemberKind.BLOB
    kind = _FIXED_MEMBERS.get(name)
    if kind is None:
        raise BackupError(f"unexpected member {name!r}: not part of a FileWallBall backup")
    return kind


def table_of(member: str) -> str:
    """The table a tables/ member holds."""
    return member.removeprefix("tables/").removesuffix(".jsonl")


def is_sha256(text: object) -> bool:
    return isinstance(text, str) and _HEX64.fullmatch(text) is not None


def secret_fingerprint(secret: bytes) -> str:
    """Tells two server secrets apart without revealing either (a keyed hash, truncated)."""
    return hmac.new(secret, b"filewallball-backup-fingerprint", hashlib.sha256).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class SecretInfo:
    """Where an instance's server secret comes from, and its fingerprint."""

    source: SecretSource
    fingerprint: str | None = None

    @classmethod
    def of(cls, found: FoundSecret) -> SecretInfo:
        fingerprint = secret_fingerprint(found.key) if found.key is not None else None
        return cls(found.source, fingerprint)


@dataclass(frozen=True, slots=True)
class Digest:
    size: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"size": self.size, "sha256": self.sha256}


@dataclass(frozen=True, slots=True)
class Header:
    """What the archive is; written first so a restore can refuse it early."""

    created_at: datetime
    source_backend: str
    schema_revision: str
    app_version: str
    secret: SecretInfo
    api_keys: int

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "created_at": self.created_at.astimezone(UTC).isoformat(),
            "source_backend": self.source_backend,
            "schema_revision": self.schema_revision,
            "app_version": self.app_version,
            "secret": {"source": self.secret.source.value, "fingerprint": self.secret.fingerprint},
            "api_keys": self.api_keys,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, member: str) -> Header:
        """BackupError naming `member` for anything but this format's version and shape."""
        fields = _Fields(data, member)
        fmt, version = data.get("format"), data.get("version")
        if fmt != FORMAT:
            raise BackupError(f"{member}: not a FileWallBall backup (format {fmt!r})")
        if version != FORMAT_VERSION:
            raise BackupError(
                f"{member}: backup format version {version!r} is not supported "
                f"(this FileWallBall reads version {FORMAT_VERSION})"
            )
        secret = fields.mapping("secret")
        fingerprint = secret.get("fingerprint")
        try:
            source = SecretSource(str(secret.get("source")))
        except ValueError:
            raise BackupError(f"{member}: secret.source is not one of env, file, none") from None
        if fingerprint is not None and not (
            isinstance(fingerprint, str) and re.fullmatch(r"[0-9a-f]{16}", fingerprint)
        ):
            raise BackupError(f"{member}: secret.fingerprint is malformed")
        backend = fields.text("source_backend")
        if backend not in ("sqlite", "postgresql"):
            raise BackupError(f"{member}: unknown source backend {backend!r}")
        return cls(
            created_at=fields.moment("created_at"),
            source_backend=backend,
            schema_revision=fields.text("schema_revision"),
            app_version=fields.text("app_version"),
            secret=SecretInfo(source=source, fingerprint=fingerprint),
            api_keys=fields.count("api_keys"),
        )


@dataclass(frozen=True, slots=True)
class Manifest:
    """The archive's table of contents, written last."""

    header: Header
    rows: dict[str, int]
    blobs: int
    blob_bytes: int
    skipped: int
    members: dict[str, Digest] = field(default_factory=dict)

    def to_json(self) -> bytes:
        body = {
            **self.header.to_json(),
            "counts": {
                "rows": self.rows,
                "blobs": self.blobs,
                "blob_bytes": self.blob_bytes,
                "skipped_files": self.skipped,
            },
            "members": {name: digest.to_json() for name, digest in sorted(self.members.items())},
        }
        return json.dumps(body, indent=2, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_json(cls, raw: bytes) -> Manifest:
        data = load_object(raw, MANIFEST)
        header = Header.from_json(data, member=MANIFEST)
        counts = _Fields(_Fields(data, MANIFEST).mapping("counts"), f"{MANIFEST} counts")
        rows_field = _Fields(counts.mapping("rows"), f"{MANIFEST} counts.rows")
        rows = {table: rows_field.count(table) for table in TABLES}
        members: dict[str, Digest] = {}
        for name, entry in _Fields(data, MANIFEST).mapping("members").items():
            kind = classify(name)
            if kind in (MemberKind.BLOB, MemberKind.MANIFEST):
                raise BackupError(f"{MANIFEST}: lists {name!r}, which it cannot list")
            entry_fields = _Fields(_mapping(entry, f"{MANIFEST} {name}"), f"{MANIFEST} {name}")
            sha = entry_fields.text("sha256")
            if not is_sha256(sha):
                raise BackupError(f"{MANIFEST}: the SHA-256 of {name} is malformed")
            members[name] = Digest(size=entry_fields.count("size"), sha256=sha)
        return cls(
            header=header,
            rows=rows,
            blobs=counts.count("blobs"),
            blob_bytes=counts.count("blob_bytes"),
            skipped=counts.count("skipped_files"),
            members=members,
        )


def load_object(raw: bytes, member: str) -> dict[str, Any]:
    """A JSON object, or BackupError naming `member`."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as error:
        raise BackupError(f"{member}: not valid JSON ({error})") from None
    return _mapping(data, member)


def _mapping(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BackupError(f"{where}: expected a JSON object")
    return value


class _Fields:
    """Typed reads from a parsed JSON object; BackupError naming the member for a wrong one."""

    def __init__(self, data: Mapping[str, Any], where: str) -> None:
        self._data = data
        self._where = where

    def text(self, key: str) -> str:
        value = self._data.get(key)
        if not isinstance(value, str) or not value:
            raise BackupError(f"{self._where}: {key} must be a non-empty string")
        return value

    def count(self, key: str) -> int:
        value = self._data.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise BackupError(f"{self._where}: {key} must be a non-negative integer")
        return value

    def mapping(self, key: str) -> dict[str, Any]:
        return _mapping(self._data.get(key), f"{self._where}: {key}")

    def moment(self, key: str) -> datetime:
        try:
            moment = datetime.fromisoformat(self.text(key))
        except ValueError:
            raise BackupError(f"{self._where}: {key} is not an ISO 8601 date-time") from None
        if moment.tzinfo is None:
            raise BackupError(f"{self._where}: {key} has no time zone")
        return moment
