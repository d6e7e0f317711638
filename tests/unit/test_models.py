from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from filewallball.domain.errors import InvalidRequest, TypeNotAllowed
from filewallball.domain.models import (
    LATEST_INSTANT,
    ByteRange,
    ByteSize,
    ContentType,
    Cursor,
    FileId,
    Filename,
    FileRecord,
    ListQuery,
    Sha256,
    SortKey,
    TypePolicy,
    Visibility,
    utc_instant,
)
from filewallball.entrypoints.http.conditional import Validators


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("report.pdf", "report.pdf"),
        ("../../etc/passwd", ".._.._etc_passwd"),
        ("..\\..\\boot.ini", ".._.._boot.ini"),
        ("a\x00b.txt", "ab.txt"),
        ("evil\r\nSet-Cookie: x.txt", "evilSet-Cookie: x.txt"),
        ("invoice\u202egpj.exe", "invoicegpj.exe"),
        ("..", "unnamed"),
        (".", "unnamed"),
        ("", "unnamed"),
        ("   ", "unnamed"),
        ("\x00\x01", "unnamed"),
        ("Ünïcødé 文件 файл ملف.txt", "Ünïcødé 文件 файл ملف.txt"),
    ],
)
def test_filename_sanitise(raw: str, expected: str) -> None:
    assert Filename.sanitise(raw) == expected


def test_filename_is_cut_to_255_utf8_bytes_keeping_the_extension() -> None:
    name = Filename.sanitise("ж" * 1000 + ".tar")
    assert len(name.encode()) <= 255
    assert name.endswith(".tar")
    assert set(name[:-4]) == {"ж"}  # whole characters only


def test_filename_without_extension_is_cut_on_a_character_boundary() -> None:
    name = Filename.sanitise("😀" * 100)
    assert len(name.encode()) <= 255
    assert name == "😀" * 63


def test_filename_nfc_normalised() -> None:
    assert Filename.sanitise("e\u0301.txt") == "\u00e9.txt"


def test_file_ids_are_unguessable_and_url_safe() -> None:
    ids = {FileId.new() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(FileId.parse(i) == i for i in ids)
    assert FileId.parse("../etc") is None
    assert FileId.parse("x" * 23) is None


def test_sha256_validates() -> None:
    with pytest.raises(ValueError, match="SHA-256"):
        Sha256("ABC")
    assert Sha256.from_digest(bytes(32)) == "0" * 64


def test_byte_size_not_negative() -> None:
    with pytest.raises(ValueError, match="negative"):
        ByteSize(-1)


@pytest.mark.parametrize(
    ("media_type", "text"),
    [
        ("text/plain", True),
        ("text/csv", True),
        ("application/json", True),
        ("application/ld+json", True),
        ("image/svg+xml", True),
        ("image/png", False),
        ("application/octet-stream", False),
        ("application/pdf", False),
    ],
)
def test_content_type_is_text(media_type: str, text: bool) -> None:
    assert ContentType(media_type).is_text is text


def test_content_type_normalises_and_matches() -> None:
    ct = ContentType("Text/Plain; charset=utf-8")
    assert ct == "text/plain"
    assert ct.matches("text/*") and ct.matches("*/*") and ct.matches("TEXT/PLAIN")
    assert not ct.matches("image/*")
    with pytest.raises(ValueError, match="media type"):
        ContentType("nonsense")


def test_type_policy_deny_wins_and_allow_list_limits() -> None:
    policy = TypePolicy(allowed=("image/*", "text/plain"), denied=("image/svg+xml",))
    policy.check(ContentType("image/png"))
    policy.check(ContentType("text/plain"))
    with pytest.raises(TypeNotAllowed):
        policy.check(ContentType("image/svg+xml"))
    with pytest.raises(TypeNotAllowed):
        policy.check(ContentType("application/pdf"))
    TypePolicy().check(ContentType("application/pdf"))


def test_byte_range() -> None:
    assert ByteRange(0, 0).length == 1
    with pytest.raises(ValueError, match="range"):
        ByteRange(5, 4)


def test_cursor_round_trip_and_tampering() -> None:
    cursor = Cursor(SortKey.SIZE, 42, FileId.new())
    assert Cursor.decode(cursor.encode()) == cursor
    for bad in ("", "!!!", "bm90IGpzb24", cursor.encode()[:-3]):
        with pytest.raises(InvalidRequest):
            Cursor.decode(bad)


@pytest.mark.parametrize(
    ("sort", "value"),
    [
        (SortKey.CREATED_AT, "9999-12-31T23:59:59-23:59"),  # past datetime.max in UTC
        (SortKey.CREATED_AT, "0001-01-01T00:00:00+23:59"),  # before datetime.min in UTC
        (SortKey.CREATED_AT, "9999-06-01T00:00:00Z"),  # past LATEST_INSTANT
        (SortKey.CREATED_AT, "2026-01-01T00:00:00"),  # no time zone
        (SortKey.CREATED_AT, 5),
        (SortKey.SIZE, 2**63),
        (SortKey.SIZE, -1),
        (SortKey.SIZE, True),
        (SortKey.FILENAME, 5),
    ],
)
def test_a_cursor_value_out_of_its_column_range_is_invalid(sort: SortKey, value: str | int) -> None:
    token = Cursor(sort, value, FileId.new()).encode()
    with pytest.raises(InvalidRequest):
        Cursor.decode(token)


def test_instants_of_requests_lie_before_9999() -> None:
    assert utc_instant(datetime(2026, 1, 1, 1, tzinfo=timezone(timedelta(hours=1)))) == datetime(
        2026, 1, 1, tzinfo=UTC
    )
    for moment in (LATEST_INSTANT, datetime(2026, 1, 1), datetime.max.replace(tzinfo=UTC)):
        with pytest.raises(ValueError, match=r"time zone|between"):
            utc_instant(moment)


def test_list_query_checks_limit_and_cursor_sort() -> None:
    with pytest.raises(InvalidRequest):
        ListQuery(limit=0)
    with pytest.raises(InvalidRequest):
        ListQuery(limit=1001)
    with pytest.raises(InvalidRequest):
        ListQuery(sort=SortKey.SIZE, cursor=Cursor(SortKey.FILENAME, "a", FileId.new()))


def test_record_json_round_trip() -> None:
    record = FileRecord(
        id=FileId.new(),
        filename=Filename.sanitise("naïve.txt"),
        size=ByteSize(3),
        content_type=ContentType("text/plain"),
        sha256=Sha256("a" * 64),
        created_at=datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
        visibility=Visibility.PUBLIC,
        owner="k1",
    )
    validators = Validators.of(record)
    assert validators.etag == f'"{"a" * 64}"'
    assert validators.last_modified.microsecond == 0


def test_issued_keys_parse_back_to_their_id() -> None:
    from filewallball.domain.security import IssuedKey

    for _ in range(2000):  # ids never contain the separator, whatever the random bytes
        issued = IssuedKey.generate()
        assert IssuedKey.key_id_of(issued.secret) == issued.key_id
