from __future__ import annotations

from datetime import UTC, datetime

import pytest

from filewallball.domain.errors import InvalidRequest
from filewallball.domain.models import ByteRange
from filewallball.entrypoints.http.conditional import (
    MAX_RANGE_SPECS,
    Precondition,
    Unsatisfiable,
    Validators,
    evaluate,
    if_range_allows,
    parse_ranges,
)

ETAG = '"abc"'
MODIFIED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
V = Validators(ETAG, MODIFIED)
BEFORE = "Thu, 01 Jan 2026 00:00:00 GMT"
EXACT = "Fri, 02 Jan 2026 03:04:05 GMT"
AFTER = "Sat, 03 Jan 2026 00:00:00 GMT"


def check(method: str = "GET", **headers: str) -> Precondition:
    return evaluate(
        method=method,
        validators=V,
        if_match=headers.get("if_match"),
        if_none_match=headers.get("if_none_match"),
        if_modified_since=headers.get("if_modified_since"),
        if_unmodified_since=headers.get("if_unmodified_since"),
    )


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, Precondition.PROCEED),
        ({"if_none_match": ETAG}, Precondition.NOT_MODIFIED),
        ({"if_none_match": 'W/"abc"'}, Precondition.NOT_MODIFIED),  # weak comparison
        ({"if_none_match": '"x", "abc"'}, Precondition.NOT_MODIFIED),
        ({"if_none_match": "*"}, Precondition.NOT_MODIFIED),
        ({"if_none_match": '"other"'}, Precondition.PROCEED),
        ({"if_none_match": "garbage"}, Precondition.PROCEED),
        ({"if_match": ETAG}, Precondition.PROCEED),
        ({"if_match": 'W/"abc"'}, Precondition.FAILED),  # strong comparison
        ({"if_match": '"other"'}, Precondition.FAILED),
        ({"if_match": "*"}, Precondition.PROCEED),
        ({"if_modified_since": EXACT}, Precondition.NOT_MODIFIED),
        ({"if_modified_since": AFTER}, Precondition.NOT_MODIFIED),
        ({"if_modified_since": BEFORE}, Precondition.PROCEED),
        ({"if_modified_since": "yesterday"}, Precondition.PROCEED),
        ({"if_unmodified_since": BEFORE}, Precondition.FAILED),
        ({"if_unmodified_since": EXACT}, Precondition.PROCEED),
        # If-None-Match takes precedence over If-Modified-Since
        ({"if_none_match": '"other"', "if_modified_since": AFTER}, Precondition.PROCEED),
        # If-Match takes precedence over If-Unmodified-Since
        ({"if_match": ETAG, "if_unmodified_since": BEFORE}, Precondition.PROCEED),
    ],
)
def test_evaluate(headers: dict[str, str], expected: Precondition) -> None:
    assert check(**headers) is expected


def test_if_none_match_on_unsafe_method_fails() -> None:
    assert check("DELETE", if_none_match=ETAG) is Precondition.FAILED


def test_if_range() -> None:
    assert if_range_allows(None, V)
    assert if_range_allows(ETAG, V)
    assert not if_range_allows('W/"abc"', V)
    assert not if_range_allows('"other"', V)
    assert if_range_allows(EXACT, V)
    assert not if_range_allows(AFTER, V)
    assert not if_range_allows("not a date", V)


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        ("bytes=0-0", 10, [ByteRange(0, 0)]),
        ("bytes=0-9", 10, [ByteRange(0, 9)]),
        ("bytes=0-100", 10, [ByteRange(0, 9)]),
        ("bytes=5-", 10, [ByteRange(5, 9)]),
        ("bytes=-3", 10, [ByteRange(7, 9)]),
        ("bytes=-100", 10, [ByteRange(0, 9)]),
        ("bytes= 1 - 2 ", 10, [ByteRange(1, 2)]),
        ("BYTES=1-2", 10, [ByteRange(1, 2)]),
        ("bytes=0-1,5-6", 1000, [ByteRange(0, 6)]),  # close together: merged
        ("bytes=0-1,500-600", 1000, [ByteRange(0, 1), ByteRange(500, 600)]),
        ("bytes=500-600,0-1", 1000, [ByteRange(0, 1), ByteRange(500, 600)]),
        ("bytes=0-5,2-8,3-4", 1000, [ByteRange(0, 8)]),
        ("bytes=0-1,20-", 10, [ByteRange(0, 1)]),  # the unsatisfiable one is dropped
        ("items=0-1", 10, None),
        ("bytes=", 10, None),
        ("bytes=5-1", 10, None),
        ("bytes=a-b", 10, None),
        ("bytes=-", 10, None),
        ("bytes=1-2-3", 10, None),
    ],
)
def test_parse_ranges(header: str, size: int, expected: list[ByteRange] | None) -> None:
    assert parse_ranges(header, size) == expected


@pytest.mark.parametrize(("header", "size"), [("bytes=10-", 10), ("bytes=-0", 10), ("bytes=0-", 0)])
def test_unsatisfiable(header: str, size: int) -> None:
    with pytest.raises(Unsatisfiable):
        parse_ranges(header, size)


def test_many_ranges_are_ignored_cheaply() -> None:
    many = "bytes=" + ",".join(f"{i}-{i}" for i in range(MAX_RANGE_SPECS + 1))
    assert parse_ranges(many, 10**6) is None
    # Many overlapping ranges collapse into one.
    overlapping = "bytes=" + ",".join("0-999" for _ in range(MAX_RANGE_SPECS))
    assert parse_ranges(overlapping, 10**6) == [ByteRange(0, 999)]
    # Many far-apart ranges are more parts than we send: the whole file instead.
    spread = "bytes=" + ",".join(f"{i * 1000}-{i * 1000}" for i in range(50))
    assert parse_ranges(spread, 10**6) is None


@pytest.mark.parametrize(
    "header",
    ["bytes=9223372036854775808-", "bytes=0-99999999999999999999", f"bytes=-{'9' * 5000}"],
)
def test_positions_past_any_file_size_are_invalid(header: str) -> None:
    with pytest.raises(InvalidRequest) as raised:
        parse_ranges(header, 10)
    assert raised.value.code == "invalid_range"


def test_the_largest_position_is_a_range() -> None:
    assert parse_ranges("bytes=0-9223372036854775807", 10) == [ByteRange(0, 9)]
    assert parse_ranges("bytes=\u0661-", 10) is None  # digits are ASCII digits
