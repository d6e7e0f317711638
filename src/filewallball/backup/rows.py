"""Table rows as JSON Lines of portable values, checked against the tables on the way back."""

# Rows travel as JSON objects keyed by column name, with portable values only: strings,
# integers, null, and date-times as ISO 8601 in UTC. So an archive written on SQLite restores
# onto PostgreSQL and the other way round.

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import IO, Any

import sqlalchemy as sa

from filewallball.adapters.sql import api_keys, audit_log, blobs, files, ip_rules, utc
from filewallball.backup.format import TABLES, BackupError, is_sha256

BATCH_ROWS = 1000
# No row comes near this (names, notes and details are short): a longer line is refused before
# it is held in memory whole.
MAX_LINE_BYTES = 1024 * 1024
_MIN_BIGINT, _MAX_BIGINT = -(2**63), 2**63 - 1
SQL_TABLES: dict[str, sa.Table] = {
    "blobs": blobs,
    "files": files,
    "api_keys": api_keys,
    "ip_rules": ip_rules,
    "audit_log": audit_log,
}
assert tuple(SQL_TABLES) == TABLES


def numbered_lines(handle: IO[bytes], where: str) -> Iterator[tuple[int, bytes]]:
    """The lines of a JSON Lines file, numbered from 1; BackupError for an overlong one."""
    number = 0
    while line := handle.readline(MAX_LINE_BYTES + 1):
        number += 1
        if len(line) > MAX_LINE_BYTES:
            raise BackupError(f"{where} line {number}: longer than {MAX_LINE_BYTES} bytes")
        yield number, line


def primary_key(table: str) -> str:
    """The column that identifies a row of `table` (every backed-up table has one)."""
    [column] = SQL_TABLES[table].primary_key.columns
    return column.name


def encode_row(row: Mapping[str, Any]) -> bytes:
    """One JSON line; date-times in UTC ISO 8601."""
    portable = {
        name: utc(value).isoformat() if isinstance(value, datetime) else value
        for name, value in row.items()
    }
    return json.dumps(portable, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def decode_row(table: str, line: bytes, *, where: str) -> dict[str, Any]:
    """A row of `table` ready to insert; BackupError naming `where` when it does not fit.

    A nullable column a row lacks is null; a non-nullable one missing, an unknown column or a
    value of the wrong type is an error. (Only archives of this version's schema revision get
    here: check_revision refuses the others.)
    """
    try:
        data = json.loads(line)
    except (UnicodeDecodeError, ValueError) as error:
        raise BackupError(f"{where}: not a JSON line ({error})") from None
    if not isinstance(data, dict):
        raise BackupError(f"{where}: not a JSON object")
    columns = SQL_TABLES[table].c
    unknown = set(data) - set(columns.keys())
    if unknown:
        raise BackupError(f"{where}: unknown column(s) {', '.join(sorted(unknown))}")
    return {column.name: _value(column, data.get(column.name), where) for column in columns}


def _value(column: sa.Column[Any], value: object, where: str) -> object:
    name = f"{where}: {column.name}"
    if value is None:
        if not column.nullable:
            raise BackupError(f"{name} is missing")
        return None
    kind = column.type
    if isinstance(kind, sa.DateTime):
        if isinstance(value, str):
            try:
                moment = datetime.fromisoformat(value)
            except ValueError:
                pass
            else:
                if moment.tzinfo is not None:
                    return moment.astimezone(UTC)
        raise BackupError(f"{name} is not an ISO 8601 date-time with a zone")
    if isinstance(kind, sa.Integer):
        if (
            isinstance(value, int)
            and not isinstance(value, bool)
            and _MIN_BIGINT <= value <= _MAX_BIGINT
        ):
            return value
        raise BackupError(f"{name} is not a 64-bit integer")
    if isinstance(kind, sa.String):
        if not isinstance(value, str):
            raise BackupError(f"{name} is not a string")
        try:
            value.encode()
        except UnicodeEncodeError:
            raise BackupError(f"{name} is not valid Unicode") from None
        if "\x00" in value:
            raise BackupError(f"{name} contains a NUL character")
        if kind.length is not None and len(value) > kind.length:
            raise BackupError(f"{name} is longer than {kind.length} characters")
        if column.name == "sha256" and not is_sha256(value):
            raise BackupError(f"{name} is not a SHA-256")
        return value
    raise AssertionError(f"no codec for the column type {kind!r}")  # pragma: no cover


def dumps_line(value: dict[str, object]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode() + b"\n"
