"""The statement of one page of file records: ListQuery's filters, sort order and cursor."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from filewallball.adapters.sql.store import storable, utc
from filewallball.adapters.sql.tables import files
from filewallball.domain.errors import InvalidRequest
from filewallball.domain.models import Cursor, FileRecord, ListQuery, SortKey, Visibility

_LIKE_ESCAPE = "\\"


def select_page(query: ListQuery, *, on_postgresql: bool) -> sa.Select[Any] | None:
    """The page's statement (one row more than the limit), or None when nothing can match."""
    conditions = _filters(query, on_postgresql=on_postgresql)
    if conditions is None:
        return None
    column, descending = files.c[query.sort.column], query.sort.descending
    if query.cursor is not None:
        key = sa.tuple_(column, files.c.id)
        mark = sa.tuple_(
            sa.literal(_cursor_bound(query.cursor), column.type),
            sa.literal(str(query.cursor.last_id), files.c.id.type),
        )
        conditions.append(key < mark if descending else key > mark)
    order = [c.desc() if descending else c.asc() for c in (column, files.c.id)]
    return sa.select(files).where(*conditions).order_by(*order).limit(query.limit + 1)


def sort_value(record: FileRecord, sort: SortKey) -> str | int:
    """The cursor value of `record`: the same as the in-memory fake's, so cursors agree."""
    if sort.column == "size":
        return int(record.size)
    if sort.column == "filename":
        return str(record.filename)
    return record.created_at.astimezone(UTC).isoformat()


def _filters(query: ListQuery, *, on_postgresql: bool) -> list[sa.ColumnElement[bool]] | None:
    """The visibility, type and name conditions; None when no stored file can match them."""
    conditions: list[sa.ColumnElement[bool]] = []
    # Trashed files are listed only when asked for, expired ones never.
    deleted = files.c.deleted_at.is_not(None)
    conditions.append(deleted if query.trash else ~deleted)
    if query.now is not None:
        conditions.append(sa.or_(files.c.expires_at.is_(None), files.c.expires_at > utc(query.now)))
    if query.owner is not None:
        conditions.append(files.c.owner == query.owner)
    if query.visible_to is not None:
        public = files.c.visibility == Visibility.PUBLIC.value
        conditions.append(sa.or_(files.c.owner == query.visible_to, public))
    if query.content_type is not None:
        pattern = query.content_type.strip().lower()
        if not storable(pattern):
            return None
        if pattern.endswith("/*") and pattern != "*/*":
            prefix = pattern[:-1]
            conditions.append(files.c.content_type.startswith(prefix, autoescape=True))
        elif pattern != "*/*":
            conditions.append(files.c.content_type == pattern)
    if query.name_contains is not None:
        if not storable(query.name_contains):
            return None
        like = _fold(sa.literal("%" + _escape_like(query.name_contains) + "%"), on_postgresql)
        conditions.append(_fold(files.c.filename, on_postgresql).like(like, escape=_LIKE_ESCAPE))
    return conditions


def _fold(text: sa.ColumnElement[Any], on_postgresql: bool) -> sa.ColumnElement[str]:
    """`text` case-folded beyond ASCII (SQLite's own lower() only folds ASCII)."""
    if on_postgresql:
        # Under the column's "C" collation lower() would fold ASCII only.
        return sa.func.lower(text.collate("default"))
    return sa.func.fwb_casefold(text, type_=sa.Text)


def _cursor_bound(cursor: Cursor) -> int | str | datetime:
    """The cursor's value as its column's type, or InvalidRequest (a cursor can be forged)."""
    value = cursor.value
    if cursor.sort.column == "size":
        if isinstance(value, int) and -(2**63) <= value < 2**63:
            return value
    elif isinstance(value, str) and storable(value):
        if cursor.sort.column == "filename":
            return value
        with contextlib.suppress(ValueError):
            return utc(datetime.fromisoformat(value))
    raise InvalidRequest("the cursor is not valid", code="invalid_cursor")


def _escape_like(text: str) -> str:
    return (
        text.replace(_LIKE_ESCAPE, _LIKE_ESCAPE * 2)
        .replace("%", _LIKE_ESCAPE + "%")
        .replace("_", _LIKE_ESCAPE + "_")
    )
