"""RFC 9110 conditional requests and byte ranges, as pure functions over header values."""

from __future__ import annotations

import enum
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from email.utils import parsedate_to_datetime

from filewallball.domain.errors import InvalidRequest
from filewallball.domain.models import MAX_STORED_INT, ByteRange, FileRecord

# Past these, a Range header is ignored and the whole file is sent (RFC 9110 §14.2 lets a
# server ignore ranges): parsing and coalescing stay cheap whatever a client sends.
MAX_RANGE_SPECS = 100
MAX_RANGE_PARTS = 16
# Ranges closer than this are merged: a multipart part header costs about as much.
_COALESCE_GAP = 80

_ENTITY_TAG = re.compile(r'\s*(W/)?"([\x21\x23-\x7e\x80-\xff]*)"\s*(?:,|$)')
_RANGE_SPEC = re.compile(r"^\s*([0-9]*)\s*-\s*([0-9]*)\s*$")
_POSITION_DIGITS = len(str(MAX_STORED_INT))


class Precondition(enum.Enum):
    PROCEED = "proceed"
    NOT_MODIFIED = "not_modified"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Validators:
    etag: str
    last_modified: datetime

    @classmethod
    def of(cls, record: FileRecord) -> Validators:
        """A file's: the content hash as a strong tag, and its creation in whole seconds (the
        precision HTTP dates carry)."""
        return cls(f'"{record.sha256}"', record.created_at.replace(microsecond=0))

    @classmethod
    def of_record(cls, record: FileRecord) -> Validators:
        """A file's record (GET /files/{id}): a strong tag of every field the record shows, so
        it changes with its scan or thumbnail status, visibility, expiry or trash; the date is
        the upload's, the only one a record has (the bytes never change)."""
        shown = "\x1f".join(
            value.isoformat() if isinstance(value, datetime) else str(value)
            for value in (getattr(record, field.name) for field in fields(record))
        )
        tag = hashlib.blake2b(shown.encode(), digest_size=16).hexdigest()
        return cls(f'"r{tag}"', record.created_at.replace(microsecond=0))


def _entity_tags(header: str) -> list[tuple[bool, str]] | None:
    """(weak, opaque-tag) pairs of an If-Match / If-None-Match list; None when malformed."""
    tags: list[tuple[bool, str]] = []
    position = 0
    while position < len(header):
        match = _ENTITY_TAG.match(header, position)
        if match is None:
            return None
        tags.append((match.group(1) is not None, f'"{match.group(2)}"'))
        position = match.end()
    return tags


def _http_date(value: str) -> datetime | None:
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return parsed if parsed.tzinfo is not None else None


def _matches(header: str, etag: str, *, weak: bool) -> bool:
    if header.strip() == "*":
        return True
    tags = _entity_tags(header) or []
    return any(tag == etag and (weak or not is_weak) for is_weak, tag in tags)


def evaluate(
    *,
    method: str,
    validators: Validators,
    if_match: str | None,
    if_none_match: str | None,
    if_modified_since: str | None,
    if_unmodified_since: str | None,
) -> Precondition:
    """The RFC 9110 §13.2.2 evaluation order, for a representation that exists."""
    if if_match is not None:
        if not _matches(if_match, validators.etag, weak=False):
            return Precondition.FAILED
    elif if_unmodified_since is not None:
        date = _http_date(if_unmodified_since)
        if date is not None and validators.last_modified > date:
            return Precondition.FAILED
    safe = method in ("GET", "HEAD")
    if if_none_match is not None:
        if _matches(if_none_match, validators.etag, weak=True):
            return Precondition.NOT_MODIFIED if safe else Precondition.FAILED
    elif if_modified_since is not None and safe:
        date = _http_date(if_modified_since)
        if date is not None and validators.last_modified <= date:
            return Precondition.NOT_MODIFIED
    return Precondition.PROCEED


def evaluate_headers(
    method: str, headers: Mapping[str, str], validators: Validators, *, dated: bool = True
) -> Precondition:
    """`evaluate` over a request's headers; `dated=False` for a representation whose date does
    not follow its changes (a record: its tag decides), so If-Modified-Since is not honoured."""
    return evaluate(
        method=method,
        validators=validators,
        if_match=headers.get("if-match"),
        if_none_match=headers.get("if-none-match"),
        if_modified_since=headers.get("if-modified-since") if dated else None,
        if_unmodified_since=headers.get("if-unmodified-since"),
    )


def if_range_allows(if_range: str | None, validators: Validators) -> bool:
    """Whether a Range may be honoured: If-Range absent, or naming this exact representation."""
    if if_range is None:
        return True
    value = if_range.strip()
    if value.startswith(('"', "W/")):
        return value == validators.etag  # strong comparison; a weak tag never matches
    date = _http_date(value)
    return date is not None and date == validators.last_modified


class Unsatisfiable(Exception):
    """No range of the header overlaps the representation: answer 416."""


def parse_ranges(header: str | None, size: int) -> list[ByteRange] | None:
    """The ranges to send, sorted and coalesced; None to send the whole representation.

    Raises Unsatisfiable when the header is valid but no range lies inside `size` bytes, and
    InvalidRequest for a position past any file's size (int() of 5000 digits would raise).
    """
    if header is None:
        return None
    unit, _, specs = header.partition("=")
    if unit.strip().lower() != "bytes" or not specs:
        return None
    raw_specs = specs.split(",")
    if len(raw_specs) > MAX_RANGE_SPECS:
        return None
    ranges: list[ByteRange] = []
    for raw in raw_specs:
        match = _RANGE_SPEC.fullmatch(raw)
        if match is None or match.group(0).strip() == "-":
            return None
        first, last = match.groups()
        if first:
            start = _position(first)
            end = _position(last) if last else size - 1
            if last and end < start:
                return None  # syntactically invalid: ignore the whole header
            if start < size:
                ranges.append(ByteRange(start, min(end, size - 1)))
        else:
            suffix = _position(last)
            if suffix > 0 and size > 0:
                ranges.append(ByteRange(max(0, size - suffix), size - 1))
    if not ranges:
        raise Unsatisfiable
    merged = _coalesce(ranges)
    return merged if len(merged) <= MAX_RANGE_PARTS else None


def _position(digits: str) -> int:
    position = int(digits) if len(digits) <= _POSITION_DIGITS else MAX_STORED_INT + 1
    if position > MAX_STORED_INT:
        raise InvalidRequest(
            f"a byte position in Range is at most {MAX_STORED_INT}", code="invalid_range"
        )
    return position


def _coalesce(ranges: list[ByteRange]) -> list[ByteRange]:
    ordered = sorted(ranges, key=lambda r: r.start)
    merged = [ordered[0]]
    for current in ordered[1:]:
        last = merged[-1]
        if current.start <= last.end + 1 + _COALESCE_GAP:
            merged[-1] = ByteRange(last.start, max(last.end, current.end))
        else:
            merged.append(current)
    return merged
