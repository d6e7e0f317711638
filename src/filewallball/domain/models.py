"""Domain models and value objects: the rules about files live here."""

from __future__ import annotations

import base64
import enum
import hashlib
import json
import re
import secrets
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Generic, TypeVar

# Content types live in their own module; named here too, with the records that carry them.
from filewallball.domain.content import TEXT_EXTENSIONS as TEXT_EXTENSIONS
from filewallball.domain.content import ContentType as ContentType
from filewallball.domain.content import TypePolicy as TypePolicy
from filewallball.domain.content import validate_type_pattern as validate_type_pattern
from filewallball.domain.errors import InvalidRequest

_FILE_ID = re.compile(r"^[A-Za-z0-9_-]{22}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

# Characters that change how the rest of a name is displayed (bidirectional overrides and
# isolates): a name like "invoice\u202egpj.exe" would otherwise show as "invoiceexe.jpg".
_BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)
MAX_FILENAME_BYTES = 255
# The largest size or count a backend stores (a signed 64-bit BIGINT): every number a request
# carries for one (a byte position, a quota, an id) is refused past it, never handed to a driver.
MAX_STORED_INT = 2**63 - 1
# The latest instant a request may name: a year short of datetime.max, so nothing derived from a
# stored instant (a time zone applied, a retention added) can overflow.
LATEST_INSTANT = datetime(9999, 1, 1, tzinfo=UTC)


def utc_instant(moment: datetime) -> datetime:
    """`moment` in UTC; ValueError without a time zone or outside 0001-01-01..LATEST_INSTANT."""
    if moment.tzinfo is None:
        raise ValueError("needs a time zone (e.g. Z)")
    try:
        instant = moment.astimezone(UTC)
    except OverflowError:  # 9999-12-31T23:59-23:59 is past datetime.max in UTC
        instant = None
    if instant is None or instant >= LATEST_INSTANT:
        raise ValueError("must lie between 0001-01-01 and 9999-01-01 (UTC)")
    return instant


class FileId(str):
    """An opaque, URL-safe, unguessable file id (128 random bits)."""

    __slots__ = ()

    @classmethod
    def new(cls) -> FileId:
        return cls(secrets.token_urlsafe(16))

    @classmethod
    def parse(cls, raw: str) -> FileId | None:
        """The id, or None when `raw` cannot be one (so it names no file)."""
        return cls(raw) if _FILE_ID.fullmatch(raw) else None

    @classmethod
    def of_upload(cls, upload: str) -> FileId:
        """The id of the file a resumable upload becomes: the same 128 random bits, so making
        it twice (a completion retried after its answer was lost) finds the first one."""
        return cls(base64.urlsafe_b64encode(bytes.fromhex(upload)).decode().rstrip("="))


class Sha256(str):
    """A SHA-256 digest in lowercase hex."""

    __slots__ = ()

    def __new__(cls, value: str) -> Sha256:
        if not _SHA256.fullmatch(value):
            raise ValueError(f"not a lowercase hex SHA-256: {value!r}")
        return super().__new__(cls, value)

    @classmethod
    def from_digest(cls, digest: bytes) -> Sha256:
        return cls(digest.hex())


class ByteSize(int):
    """A non-negative count of bytes."""

    __slots__ = ()

    def __new__(cls, value: int) -> ByteSize:
        if value < 0:
            raise ValueError(f"a byte size cannot be negative: {value}")
        return super().__new__(cls, value)


class Filename(str):
    """A display name, sanitised: a file's name is metadata only, never a path."""

    __slots__ = ()

    FALLBACK = "unnamed"

    @classmethod
    def sanitise(cls, raw: str) -> Filename:
        """Strip what can hurt (separators, NUL, controls, bidi overrides); keep every script."""
        text = unicodedata.normalize("NFC", raw)
        kept = []
        for char in text:
            if char in "/\\":
                kept.append("_")
            elif _hidden(char):
                continue
            else:
                kept.append(char)
        name = "".join(kept).strip()
        name = _truncate_utf8(name, MAX_FILENAME_BYTES).strip()
        if name in ("", ".", ".."):
            return cls(cls.FALLBACK)
        return cls(name)

    @property
    def extension(self) -> str:
        stem, dot, ext = self.rpartition(".")
        return ext.lower() if dot and stem else ""


def _hidden(char: str) -> bool:
    """NUL and the other controls, line separators, bidi overrides: not shown as themselves."""
    return char in _BIDI_CONTROLS or unicodedata.category(char) in ("Cc", "Zl", "Zp")


def has_control_characters(text: str, *, allowed: str = "") -> bool:
    """Whether `text` holds a character that is not shown as itself (other than `allowed`)."""
    return any(_hidden(char) and char not in allowed for char in text)


def _truncate_utf8(name: str, limit: int) -> str:
    """`name` cut to at most `limit` UTF-8 bytes, keeping a short extension and whole characters."""
    if len(name.encode()) <= limit:
        return name
    stem, dot, ext = name.rpartition(".")
    suffix = dot + ext if dot and stem and len(ext.encode()) <= 16 else ""
    budget = limit - len(suffix.encode())
    head = (stem if suffix else name).encode()[:budget].decode("utf-8", errors="ignore")
    return head + suffix


class Visibility(enum.StrEnum):
    PRIVATE = "private"
    PUBLIC = "public"


class ScanStatus(enum.StrEnum):
    SKIPPED = "skipped"  # no scanner configured
    CLEAN = "clean"
    UNSCANNED = "unscanned"  # the scanner failed and FWB_SCAN_FAIL_OPEN let the file in


class ThumbnailStatus(enum.StrEnum):
    NOT_APPLICABLE = "not_applicable"
    PENDING = "pending"
    READY = "ready"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class FileRecord:
    """A stored file: its metadata and the content hash that names its bytes."""

    id: FileId
    filename: Filename
    size: ByteSize
    content_type: ContentType
    sha256: Sha256
    created_at: datetime
    visibility: Visibility = Visibility.PRIVATE
    owner: str | None = None
    scan_status: ScanStatus = ScanStatus.SKIPPED
    thumbnail_status: ThumbnailStatus = ThumbnailStatus.NOT_APPLICABLE
    expires_at: datetime | None = None
    deleted_at: datetime | None = None  # in the trash since then

    def is_live(self, now: datetime) -> bool:
        """Neither in the trash nor expired: what readers may see."""
        return self.deleted_at is None and (self.expires_at is None or now < self.expires_at)

    @property
    def previewable(self) -> bool:
        """Text by its type, or by a text extension unless the bytes are known binary media."""
        if self.content_type.is_text:
            return True
        return self.filename.extension in TEXT_EXTENSIONS and not self.content_type.is_binary_media

    @property
    def thumbnailable(self) -> bool:
        return self.content_type.is_thumbnailable


@dataclass(frozen=True, slots=True)
class Preview:
    """The start of a text file, as text."""

    record: FileRecord
    text: str
    truncated: bool
    charset: str = "utf-8"  # what the bytes were decoded from


@dataclass(frozen=True, slots=True)
class ByteRange:
    """An inclusive byte range `start..end` inside a representation."""

    start: int
    end: int

    def __post_init__(self) -> None:
        if self.start < 0 or self.end < self.start:
            raise ValueError(f"not a byte range: {self.start}-{self.end}")

    @property
    def length(self) -> int:
        return self.end - self.start + 1


class SortKey(enum.StrEnum):
    CREATED_AT = "created_at"
    CREATED_AT_DESC = "-created_at"
    SIZE = "size"
    SIZE_DESC = "-size"
    FILENAME = "filename"

    @property
    def column(self) -> str:
        return self.value.lstrip("-")

    @property
    def descending(self) -> bool:
        return self.value.startswith("-")


MAX_PAGE_SIZE = 1000


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a listing stopped: the sort key's value and the id of the last item."""

    sort: SortKey
    value: str | int
    last_id: FileId

    def encode(self) -> str:
        """An opaque, URL-safe token."""
        payload = json.dumps([self.sort.value, self.value, self.last_id], separators=(",", ":"))
        return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str) -> Cursor:
        """The cursor in `token`, or InvalidRequest when it was not made by `encode`."""
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            sort, value, last_id = json.loads(raw)
            file_id = FileId.parse(last_id) if isinstance(last_id, str) else None
            if file_id is None or not _sort_value_fits(SortKey(sort), value):
                raise ValueError("bad cursor contents")
            return cls(SortKey(sort), value, file_id)
        except (ValueError, TypeError) as error:
            raise InvalidRequest("the cursor is not valid", code="invalid_cursor") from error


def _sort_value_fits(sort: SortKey, value: object) -> bool:
    """Whether `value` can be where a listing sorted by `sort` stopped (a cursor can be forged)."""
    if sort.column == "size":
        return type(value) is int and 0 <= value <= MAX_STORED_INT
    if not isinstance(value, str):
        return False
    if sort.column == "created_at":
        utc_instant(datetime.fromisoformat(value))  # ValueError when it is no instant of ours
    return True


@dataclass(frozen=True, slots=True)
class ListQuery:
    limit: int = 50
    sort: SortKey = SortKey.CREATED_AT_DESC
    cursor: Cursor | None = None
    content_type: str | None = None
    name_contains: str | None = None
    visible_to: str | None = None  # only this owner's files and public ones; None: all files
    trash: bool = False  # list the trash instead of the live files
    owner: str | None = None  # only this owner's files
    now: datetime | None = None  # leave out files that expired by then

    def __post_init__(self) -> None:
        if not 1 <= self.limit <= MAX_PAGE_SIZE:
            raise InvalidRequest(
                f"limit must be between 1 and {MAX_PAGE_SIZE}", code="invalid_limit"
            )
        if self.cursor is not None and self.cursor.sort is not self.sort:
            raise InvalidRequest("the cursor belongs to another sort order", code="invalid_cursor")


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    next_cursor: Cursor | None = None


class ImageFormat(enum.StrEnum):
    """Formats a thumbnail is encoded in."""

    WEBP = "webp"
    AVIF = "avif"
    JPEG = "jpeg"

    @property
    def media_type(self) -> str:
        return f"image/{self.value}"


class ThumbnailSize(enum.StrEnum):
    SMALL = "small"
    MEDIUM = "medium"
    LARGE = "large"

    @property
    def longest_side(self) -> int:
        return {"small": 256, "medium": 512, "large": 1024}[self.value]


def thumbnail_key(sha256: Sha256, size: ThumbnailSize, image_format: ImageFormat) -> Sha256:
    """The blob key of a rendition: derived from the content hash, so it follows the content."""
    return Sha256(hashlib.sha256(f"thumbnail:{sha256}:{size}:{image_format}".encode()).hexdigest())


def thumbnail_keys(sha256: Sha256) -> list[Sha256]:
    return [thumbnail_key(sha256, size, fmt) for size in ThumbnailSize for fmt in ImageFormat]


_UPLOAD_ID = re.compile(r"^[0-9a-f]{32}$")


class UploadId(str):
    """A resumable upload's id (128 random bits, hex): its URL is a capability of its owner's."""

    __slots__ = ()

    @classmethod
    def new(cls) -> UploadId:
        return cls(secrets.token_hex(16))

    @classmethod
    def parse(cls, value: str) -> UploadId | None:
        """The id, or None for anything that cannot be one (no lookup needed to refuse it)."""
        return cls(value) if _UPLOAD_ID.fullmatch(value) else None


@dataclass(frozen=True, slots=True)
class Segment:
    """A run of a resumable upload's bytes, stored whole under a key no other writer uses."""

    start: int
    size: int
    key: str

    @property
    def end(self) -> int:
        return self.start + self.size

    @staticmethod
    def key_for(start: int, writer: str) -> str:
        return f"{start:020d}-{writer}"


@dataclass(frozen=True, slots=True)
class ResumableUpload:
    """An upload that arrives over many requests, maybe on many replicas (tus).

    `offset` counts the bytes committed so far; `length` is None until the client declares it
    (creation-defer-length). Once complete, `file_id` names the file it became.
    """

    id: UploadId
    owner: str | None
    length: int | None
    offset: int
    filename: str
    visibility: Visibility
    expires_in_seconds: int | None  # the file's lifetime, from Upload-Metadata
    metadata: str  # Upload-Metadata as the client sent it, echoed by HEAD
    created_at: datetime
    expires_at: datetime  # the upload's own deadline (FWB_TUS_EXPIRES_IN after creation)
    reservation_id: str | None = None
    reservation_bytes: int | None = None
    file_id: FileId | None = None
    locked_until: datetime | None = None  # a writer's lease, while one holds it
    # tus concatenation: "partial" (a part, never a file itself), "final;<urls>" (the file the
    # parts became), None (a whole upload).
    concat: str | None = None

    @property
    def partial(self) -> bool:
        return self.concat == "partial"

    @property
    def complete(self) -> bool:
        return self.file_id is not None
