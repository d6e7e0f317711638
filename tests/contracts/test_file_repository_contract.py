"""The FileRepository contract, run against the in-memory fake, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import astuple, replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import anyio
import asyncpg
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from filewallball.adapters.sql import SqlFileRepository, create_engine, metadata, upgrade
from filewallball.adapters.sql import engine as sql_engine
from filewallball.domain.errors import DependencyUnavailable, InvalidRequest
from filewallball.domain.models import (
    MAX_PAGE_SIZE,
    ByteSize,
    ContentType,
    Cursor,
    FileId,
    Filename,
    FileRecord,
    ListQuery,
    ScanStatus,
    Sha256,
    SortKey,
    ThumbnailStatus,
    Visibility,
)
from filewallball.domain.ports import FileRepository
from tests.conftest import terminate_backends
from tests.fakes import FakeFileRepository
from tests.tcp_proxy import TcpProxy

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SHA = Sha256("a" * 64)


def sha(n: int) -> Sha256:
    return Sha256(f"{n:064x}")


def make_record(
    filename: str = "report.pdf",
    *,
    size: int = 10,
    content_type: str = "application/pdf",
    sha256: Sha256 = SHA,
    created_at: datetime = T0,
    file_id: str | None = None,
) -> FileRecord:
    return FileRecord(
        id=FileId(file_id) if file_id else FileId.new(),
        filename=Filename(filename),
        size=ByteSize(size),
        content_type=ContentType(content_type),
        sha256=sha256,
        created_at=created_at,
    )


async def noop() -> None:
    return None


async def add(
    repo: FileRepository, record: FileRecord, *, publish: Callable[[], Awaitable[None]] = noop
) -> None:
    """What an upload does: stage the record and its reference, store the bytes, commit."""
    async with repo.unit_of_work() as work:
        await work.add(record)
        await publish()
        await work.commit()


async def collect(
    repo: FileRepository, sha256: Sha256, *, delete: Callable[[], Awaitable[None]]
) -> bool:
    """What a collection does: forget an unreferenced blob, delete its bytes, commit."""
    async with repo.unit_of_work() as work:
        if not await work.forget_blob(sha256):
            return False
        await delete()
        await work.commit()
    return True


class Calls:
    """A callback that counts its calls and can be told to fail or wait."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.count = 0
        self.error = error
        self.started = asyncio.Event()
        self.release: asyncio.Event | None = None

    async def __call__(self) -> None:
        self.count += 1
        self.started.set()
        if self.release is not None:
            await self.release.wait()
        if self.error is not None:
            raise self.error


class CallbackFailed(OSError):
    """An OSError, so a careless adapter would mistake it for a driver failure."""


# --- backends ---------------------------------------------------------------------------------


def migrated_url(request: pytest.FixtureRequest, tmp_path: Path, backend: str) -> str:
    url = fresh_url(request, tmp_path, backend)
    upgrade(url)
    return url


def fresh_url(request: pytest.FixtureRequest, tmp_path: Path, backend: str) -> str:
    if backend == "sqlite":
        # A directory that does not exist yet: create_engine and upgrade must create it.
        return f"sqlite+aiosqlite:///{tmp_path / 'data' / 'filewallball.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@asynccontextmanager
async def sql_repository(url: str) -> AsyncIterator[SqlFileRepository]:
    engine = create_engine(url)
    try:
        yield SqlFileRepository(engine)
    finally:
        await engine.dispose()


@pytest.fixture(params=["fake", "sqlite", "postgresql"])
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> str | None:
    """None for the fake, else the URL of a migrated database (made outside the event loop)."""
    return None if request.param == "fake" else migrated_url(request, tmp_path, request.param)


@pytest.fixture(params=["sqlite", "postgresql"])
def sql_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return migrated_url(request, tmp_path, request.param)


@pytest.fixture(params=["sqlite", "postgresql"])
def unmigrated_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return fresh_url(request, tmp_path, request.param)


@pytest.fixture
def migrated_pg_url(pg_url: str) -> str:
    upgrade(pg_url)
    return pg_url


@pytest.fixture
async def repo(backend_url: str | None) -> AsyncIterator[FileRepository]:
    if backend_url is None:
        yield FakeFileRepository()
        return
    async with sql_repository(backend_url) as repository:
        yield repository


@pytest.fixture
async def sql_repo(sql_url: str) -> AsyncIterator[SqlFileRepository]:
    async with sql_repository(sql_url) as repository:
        yield repository


# --- add, get, remove -------------------------------------------------------------------------


async def test_an_expected_blob_is_unreferenced_until_a_record_commits(
    repo: FileRepository,
) -> None:
    """The row an upload commits before publishing its bytes: found by recovery if the record
    never commits, counted once when it does, and harmless for content already stored."""
    record = make_record()
    await repo.expect_blob(record.sha256, at=T0)
    assert await repo.unreferenced_blobs() == [record.sha256]
    await add(repo, record)
    assert await repo.unreferenced_blobs() == []
    await repo.expect_blob(record.sha256, at=T0)  # a second upload of the same content
    assert await repo.referenced_blobs(after=None, limit=10) == (record.sha256,)
    assert await repo.remove(record.id) is not None
    assert await repo.unreferenced_blobs() == [record.sha256]  # one reference, not two


async def test_add_then_get_returns_every_field(repo: FileRepository) -> None:
    record = FileRecord(
        id=FileId.new(),
        filename=Filename("Отчёт 2026 — 日本語 ✓ 🦊.tar.gz"),
        size=ByteSize(2**40 + 7),
        content_type=ContentType("application/gzip"),
        sha256=SHA,
        created_at=datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=UTC),
        visibility=Visibility.PUBLIC,
        owner="key_0123456789",
        scan_status=ScanStatus.CLEAN,
        thumbnail_status=ThumbnailStatus.PENDING,
    )
    await add(repo, record, publish=noop)

    stored = await repo.get(record.id)

    assert stored == record
    assert stored is not None and astuple(stored) == astuple(record)
    assert stored.created_at.utcoffset() == timedelta(0)
    assert await repo.get(FileId.new()) is None


async def test_a_time_in_another_zone_comes_back_as_the_same_instant(repo: FileRepository) -> None:
    record = make_record(created_at=datetime(2026, 6, 1, 12, tzinfo=timezone(timedelta(hours=2))))
    await add(repo, record, publish=noop)

    stored = await repo.get(record.id)

    assert stored is not None
    assert stored.created_at == datetime(2026, 6, 1, 10, tzinfo=UTC)


async def test_a_record_is_invisible_until_publish_returns(repo: FileRepository) -> None:
    record = make_record()
    seen_while_publishing: list[FileRecord | None] = []

    async def publish() -> None:
        seen_while_publishing.append(await repo.get(record.id))

    await add(repo, record, publish=publish)

    assert seen_while_publishing == [None]
    assert await repo.get(record.id) == record


async def test_a_failing_publish_leaves_no_record_and_no_reference(repo: FileRepository) -> None:
    kept = make_record("kept.pdf")
    await add(repo, kept, publish=noop)
    error = CallbackFailed("disk full")
    publish = Calls(error=error)

    for sha256 in (sha(1), SHA):  # new content, and content another record already uses
        with pytest.raises(CallbackFailed) as raised:
            await add(repo, make_record(sha256=sha256), publish=publish)
        assert raised.value is error

    assert publish.count == 2
    assert [r.id for r in (await repo.list(ListQuery())).items] == [kept.id]
    assert await repo.unreferenced_blobs() == []
    await repo.remove(kept.id)
    assert await repo.unreferenced_blobs() == [SHA]  # the failed add left no extra reference


async def test_remove_returns_the_record_once(repo: FileRepository) -> None:
    record = make_record()
    await add(repo, record, publish=noop)

    assert await repo.remove(record.id) == record
    assert await repo.get(record.id) is None
    assert await repo.remove(record.id) is None
    assert (await repo.list(ListQuery())).items == []


# --- blob reference counts --------------------------------------------------------------------


async def test_a_blob_is_collected_only_after_its_last_reference(repo: FileRepository) -> None:
    first, second = make_record("one"), make_record("two")
    await add(repo, first, publish=noop)
    await add(repo, second, publish=noop)
    delete = Calls()

    await repo.remove(first.id)
    assert await repo.unreferenced_blobs() == []
    assert await collect(repo, SHA, delete=delete) is False

    await repo.remove(second.id)
    assert await repo.unreferenced_blobs() == [SHA]
    assert await collect(repo, SHA, delete=delete) is True
    assert await repo.unreferenced_blobs() == []
    assert await collect(repo, SHA, delete=delete) is False
    assert delete.count == 1


async def test_collecting_unknown_content_does_nothing(repo: FileRepository) -> None:
    delete = Calls()

    assert await collect(repo, sha(9), delete=delete) is False
    assert delete.count == 0


async def test_a_failing_delete_keeps_the_blob_collectable(repo: FileRepository) -> None:
    record = make_record()
    await add(repo, record, publish=noop)
    await repo.remove(record.id)
    error = CallbackFailed("permission denied")

    with pytest.raises(CallbackFailed) as raised:
        await collect(repo, SHA, delete=Calls(error=error))

    assert raised.value is error
    assert await repo.unreferenced_blobs() == [SHA]
    assert await collect(repo, SHA, delete=noop) is True


async def test_content_can_be_stored_again_after_collection(repo: FileRepository) -> None:
    first = make_record("first")
    await add(repo, first, publish=noop)
    await repo.remove(first.id)
    assert await collect(repo, SHA, delete=noop) is True

    again = make_record("again")
    await add(repo, again, publish=noop)
    await repo.remove(again.id)

    assert await repo.unreferenced_blobs() == [SHA]
    assert await collect(repo, SHA, delete=noop) is True


async def test_collect_waits_for_an_add_of_the_same_content(repo: FileRepository) -> None:
    old = make_record("old")
    await add(repo, old, publish=noop)
    await repo.remove(old.id)
    publish, delete = Calls(), Calls()
    publish.release = asyncio.Event()
    new = make_record("new")

    adding = asyncio.create_task(add(repo, new, publish=publish))
    await publish.started.wait()
    collecting = asyncio.create_task(collect(repo, SHA, delete=delete))
    await asyncio.sleep(0.3)
    assert not collecting.done(), "collect_blob must wait for the add holding the blob's lock"
    publish.release.set()

    await adding
    assert await collecting is False
    assert delete.count == 0
    assert await repo.get(new.id) == new


async def test_add_waits_for_a_collect_of_the_same_content(repo: FileRepository) -> None:
    old = make_record("old")
    await add(repo, old, publish=noop)
    await repo.remove(old.id)
    order: list[str] = []
    delete = Calls()
    delete.release = asyncio.Event()

    async def publish() -> None:
        order.append("publish")

    collecting = asyncio.create_task(collect(repo, SHA, delete=delete))
    await delete.started.wait()
    new = make_record("new")
    adding = asyncio.create_task(add(repo, new, publish=publish))
    await asyncio.sleep(0.3)
    assert order == [], "add must wait until the bytes being collected are gone"
    order.append("delete")
    delete.release.set()

    assert await collecting is True
    await adding
    assert order == ["delete", "publish"]
    await repo.remove(new.id)
    assert await collect(repo, SHA, delete=noop) is True


async def test_concurrent_adds_of_the_same_content_all_count(repo: FileRepository) -> None:
    records = [make_record(f"copy {n}") for n in range(20)]
    active = 0
    most_active = 0

    async def publish() -> None:
        nonlocal active, most_active
        active += 1
        most_active = max(most_active, active)
        await asyncio.sleep(0.01)
        active -= 1

    await asyncio.gather(*(add(repo, record, publish=publish) for record in records))

    assert most_active == 1, "publishing the same content must be serialised by its lock"
    assert len((await repo.list(ListQuery(limit=100))).items) == len(records)
    for record in records[:-1]:
        assert await repo.remove(record.id) == record
        assert await collect(repo, SHA, delete=noop) is False
    await repo.remove(records[-1].id)
    assert await collect(repo, SHA, delete=noop) is True


# --- listing ----------------------------------------------------------------------------------


def catalogue() -> list[FileRecord]:
    """Records with ties on every sort column, mixed case, unicode and several types."""
    rows = [
        ("b.png", 5, "image/png", 1),
        ("B.png", 5, "image/png", 1),
        ("a.jpg", 1, "image/jpeg", 2),
        ("ä.txt", 9, "text/plain", 3),
        ("a.jpg", 5, "image/jpeg", 3),
        ("_notes.txt", 0, "text/plain", 3),
        ("Z.json", 7, "application/json", 4),
        ("a.jpg", 9, "application/pdf", 0),
        ("日本.txt", 2, "text/plain", 4),
    ]
    return [
        make_record(
            name,
            size=size,
            content_type=content_type,
            sha256=sha(n),
            created_at=T0 + timedelta(seconds=second, microseconds=n % 2 * 250_000),
        )
        for n, (name, size, content_type, second) in enumerate(rows)
    ]


def expected_order(records: list[FileRecord], sort: SortKey) -> list[FileId]:
    """The contract's order: the sort column, then the id; both compared like Python values."""

    def key(record: FileRecord) -> tuple[object, str]:
        value = {"created_at": record.created_at, "size": record.size}.get(
            sort.column, record.filename
        )
        return value, record.id

    return [r.id for r in sorted(records, key=key, reverse=sort.descending)]


async def add_all(repo: FileRepository, records: list[FileRecord]) -> None:
    for record in records:
        await add(repo, record, publish=noop)


async def walk(repo: FileRepository, limit: int, **filters: object) -> list[FileId]:
    """Every page of a listing, following cursors as a client would (through their tokens)."""
    sort = filters.pop("sort", SortKey.CREATED_AT_DESC)
    assert isinstance(sort, SortKey)
    ids: list[FileId] = []
    cursor: Cursor | None = None
    for _ in range(100):
        page = await repo.list(ListQuery(limit=limit, sort=sort, cursor=cursor, **filters))  # type: ignore[arg-type]
        assert len(page.items) <= limit
        ids += [r.id for r in page.items]
        if page.next_cursor is None:
            return ids
        assert len(page.items) == limit
        cursor = Cursor.decode(page.next_cursor.encode())
    raise AssertionError("the pages never ended")


@pytest.mark.parametrize("sort", list(SortKey))
async def test_every_sort_order_pages_without_gaps_or_duplicates(
    repo: FileRepository, sort: SortKey
) -> None:
    records = catalogue()
    await add_all(repo, records)
    expected = expected_order(records, sort)

    for limit in (1, 2, 3, 4, len(records), 50):
        assert await walk(repo, limit, sort=sort) == expected, f"limit {limit}"


@pytest.mark.parametrize(
    ("pattern", "types"),
    [
        ("image/png", {"image/png"}),
        ("IMAGE/PNG", {"image/png"}),
        ("image/*", {"image/png", "image/jpeg"}),
        ("text/*", {"text/plain"}),
        ("*/*", {"image/png", "image/jpeg", "text/plain", "application/json", "application/pdf"}),
        ("image/gif", set()),
        ("imag/*", set()),
    ],
)
async def test_content_type_filters(repo: FileRepository, pattern: str, types: set[str]) -> None:
    records = catalogue()
    await add_all(repo, records)
    expected = [
        r.id
        for r in sorted(records, key=lambda r: (r.created_at, r.id), reverse=True)
        if r.content_type in types
    ]

    assert await walk(repo, 50, content_type=pattern) == expected
    assert await walk(repo, 1, content_type=pattern) == expected


async def test_a_type_prefix_has_no_wildcards(repo: FileRepository) -> None:
    record = make_record(content_type="x-ab/c")
    await add(repo, record, publish=noop)

    assert await walk(repo, 10, content_type="x_ab/*") == []
    assert await walk(repo, 10, content_type="x-ab/*") == [record.id]


NAMES = (
    "100%_done.txt",
    "100x done.txt",
    "1000 done.txt",
    "Report.PDF",
    "äpfel.txt",
    "ÄPFEL-2.txt",
    "back\\slash.txt",  # sanitised names have none, but the adapter must not care
    "日本語.md",
)


@pytest.mark.parametrize(
    ("needle", "names"),
    [
        ("%", {"100%_done.txt"}),
        ("_", {"100%_done.txt"}),
        ("0%_d", {"100%_done.txt"}),
        ("0x d", {"100x done.txt"}),
        ("\\", {"back\\slash.txt"}),
        ("report", {"Report.PDF"}),
        ("PDF", {"Report.PDF"}),
        ("äpfel", {"äpfel.txt", "ÄPFEL-2.txt"}),
        ("ÄPF", {"äpfel.txt", "ÄPFEL-2.txt"}),
        ("日本", {"日本語.md"}),
        ("", set(NAMES)),
        ("nothing", set()),
        ("\x00", set()),  # no stored name has one; the database must not choke on it
        ("\ud800", set()),  # not encodable as UTF-8
    ],
)
async def test_name_filter_is_a_literal_case_insensitive_substring(
    repo: FileRepository, needle: str, names: set[str]
) -> None:
    records = [
        make_record(name, created_at=T0 + timedelta(seconds=n)) for n, name in enumerate(NAMES)
    ]
    await add_all(repo, records)

    page = await repo.list(ListQuery(limit=50, name_contains=needle))

    assert {r.filename for r in page.items} == names
    assert page.next_cursor is None


async def test_filters_combine_with_pagination(repo: FileRepository) -> None:
    records = catalogue()
    await add_all(repo, records)
    expected = [
        r.id
        for r in sorted(records, key=lambda r: (r.size, r.id))
        if r.content_type.startswith("image/") and "A" in r.filename.upper()
    ]

    query = {"sort": SortKey.SIZE, "content_type": "image/*", "name_contains": "A"}

    assert await walk(repo, 1, **query) == expected
    assert len(expected) == 2


async def test_visible_to_keeps_own_and_public_files(repo: FileRepository) -> None:
    records = [
        replace(make_record(f"{owner} {visibility}"), owner=owner, visibility=visibility)
        for owner in ("alice", "bob", None)
        for visibility in Visibility
    ]
    await add_all(repo, records)

    async def visible(to: str | None) -> set[str]:
        return {r.filename for r in (await repo.list(ListQuery(visible_to=to))).items}

    assert await visible("alice") == {
        "alice private",
        "alice public",
        "bob public",
        "None public",
    }
    assert await visible("") == {"alice public", "bob public", "None public"}
    assert await visible(None) == {r.filename for r in records}


async def test_limit_bounds_a_page(repo: FileRepository) -> None:
    records = catalogue()
    await add_all(repo, records)

    first = await repo.list(ListQuery(limit=2))
    everything = await repo.list(ListQuery(limit=MAX_PAGE_SIZE))

    assert len(first.items) == 2 and first.next_cursor is not None
    assert first.next_cursor.last_id == first.items[-1].id
    assert len(everything.items) == len(records) and everything.next_cursor is None
    assert (await repo.list(ListQuery(limit=len(records)))).next_cursor is None


@pytest.mark.parametrize(
    ("sort", "value"),
    [
        (SortKey.SIZE, "big"),
        (SortKey.SIZE, 2**70),
        (SortKey.CREATED_AT, 5),
        (SortKey.CREATED_AT, "yesterday"),
        (SortKey.FILENAME, 5),
        (SortKey.FILENAME, "a\x00b"),
        (SortKey.FILENAME, "\udcff"),
    ],
)
async def test_a_forged_cursor_is_an_invalid_request(
    sql_repo: SqlFileRepository, sort: SortKey, value: str | int
) -> None:
    # SQL only: the fake compares a forged value with the stored ones and raises TypeError.
    cursor = Cursor(sort, value, FileId.new())

    with pytest.raises(InvalidRequest) as raised:
        await sql_repo.list(ListQuery(sort=sort, cursor=cursor))

    assert raised.value.code == "invalid_cursor"


async def test_postgresql_sorts_bytewise_whatever_its_locale(pg_natural_language_url: str) -> None:
    await anyio.to_thread.run_sync(upgrade, pg_natural_language_url)
    # Equal names, so the ids decide: they too must compare like Python strings.
    ids = ["a" * 22, "B" * 22, "_" * 22, "-" * 22, "Z" * 22]
    names = ["b", "B", "_x", "a b", "ab", "Ä", "a", "-"]
    records = [make_record("same", file_id=file_id) for file_id in ids]
    records += [
        make_record(name, created_at=T0 + timedelta(seconds=n)) for n, name in enumerate(names)
    ]
    async with sql_repository(pg_natural_language_url) as repo:
        await add_all(repo, records)

        assert await walk(repo, 2, sort=SortKey.FILENAME) == expected_order(
            records, SortKey.FILENAME
        )
        assert {r.filename for r in (await repo.list(ListQuery(name_contains="ä"))).items} == {"Ä"}


# --- failures and recovery --------------------------------------------------------------------


async def every_operation_fails(repo: FileRepository) -> None:
    """Each method raises DependencyUnavailable quickly, and callbacks are never run."""
    callback = Calls()
    operations: list[Callable[[], Awaitable[object]]] = [
        repo.ping,
        lambda: repo.get(FileId.new()),
        lambda: add(repo, make_record(), publish=callback),
        lambda: repo.remove(FileId.new()),
        lambda: collect(repo, SHA, delete=callback),
        repo.unreferenced_blobs,
        lambda: repo.list(ListQuery()),
    ]
    for operation in operations:
        with anyio.fail_after(10), pytest.raises(DependencyUnavailable) as raised:
            await operation()
        assert raised.value.dependency == "database"
    assert callback.count == 0


async def test_an_unreachable_postgresql_is_unavailable() -> None:
    async with sql_repository("postgresql+asyncpg://postgres@127.0.0.1:1/x") as repo:
        await every_operation_fails(repo)


async def test_an_unopenable_sqlite_file_is_unavailable(tmp_path: Path) -> None:
    async with sql_repository(f"sqlite+aiosqlite:///{tmp_path}") as repo:  # a directory
        await every_operation_fails(repo)

    # aiosqlite stops the worker thread of a failed connection without waiting for it, and the
    # thread reports back to this event loop: let it do so before the loop closes.
    for thread in threading.enumerate():
        if thread.name.endswith("(_connection_worker_thread)"):
            await anyio.to_thread.run_sync(thread.join, 5)


async def test_postgresql_down_is_unavailable_and_the_repository_recovers(
    migrated_pg_url: str,
) -> None:
    target = sa.make_url(migrated_pg_url)
    proxy = TcpProxy(target.host or "127.0.0.1", target.port or 5432)
    await proxy.start()
    record = make_record()
    try:
        async with sql_repository(target.set(port=proxy.port).render_as_string(False)) as repo:
            await add(repo, record, publish=noop)

            await proxy.stop()
            await every_operation_fails(repo)

            await proxy.start()
            assert await repo.get(record.id) == record
            await repo.ping()
    finally:
        await proxy.stop()


async def test_connections_the_server_dropped_are_replaced(
    migrated_pg_url: str, pg_server: str
) -> None:
    record = make_record()
    async with sql_repository(migrated_pg_url) as repo:
        await add(repo, record, publish=noop)
        await repo.ping()
        admin = await asyncpg.connect(pg_server, timeout=5)
        try:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = $1 AND pid <> pg_backend_pid()",
                sa.make_url(migrated_pg_url).database,
            )
        finally:
            await admin.close()

        assert await repo.get(record.id) == record


async def test_a_dead_connection_the_pool_missed_is_retried_on_a_fresh_one(
    migrated_pg_url: str, pg_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pool's check misses a connection whose end the event loop has not seen yet: the
    first statement fails on it, and the operation runs again on a new connection."""
    monkeypatch.setattr(sql_engine, "_known_closed", lambda _connection: False)
    record = make_record()
    async with sql_repository(migrated_pg_url) as repo:
        await add(repo, record, publish=noop)
        await terminate_backends(pg_server, sa.make_url(migrated_pg_url).database)

        assert await repo.get(record.id) == record
        await terminate_backends(pg_server, sa.make_url(migrated_pg_url).database)
        again = make_record()
        publish = Calls()
        await add(repo, again, publish=publish)
        assert publish.count == 1
        assert await repo.get(again.id) == again


async def test_a_connection_lost_after_the_first_statement_is_not_retried(
    migrated_pg_url: str, pg_server: str
) -> None:
    """Once a statement went through (and a callback ran), only the caller can decide."""
    record = make_record()
    publish = Calls()
    database = sa.make_url(migrated_pg_url).database

    async def publish_while_the_database_drops_us() -> None:
        await publish()
        await terminate_backends(pg_server, database)

    async with sql_repository(migrated_pg_url) as repo:
        with pytest.raises(DependencyUnavailable):
            await add(repo, record, publish=publish_while_the_database_drops_us)
        assert publish.count == 1
        assert await repo.get(record.id) is None
        assert await repo.unreferenced_blobs() == []


# --- migrations -------------------------------------------------------------------------------


async def test_concurrent_upgrades_from_threads_apply_the_schema_once(unmigrated_url: str) -> None:
    async with anyio.create_task_group() as group:
        for _ in range(4):
            group.start_soon(anyio.to_thread.run_sync, upgrade, unmigrated_url)
    await anyio.to_thread.run_sync(upgrade, unmigrated_url)  # and again: nothing to do

    async with sql_repository(unmigrated_url) as repo:
        await add(repo, make_record(), publish=noop)
        assert len((await repo.list(ListQuery())).items) == 1


async def test_concurrent_upgrades_from_processes_apply_the_schema_once(
    unmigrated_url: str,
) -> None:
    code = "import sys; from filewallball.adapters.sql import upgrade; upgrade(sys.argv[1])"
    processes = [
        await asyncio.create_subprocess_exec(sys.executable, "-c", code, unmigrated_url)
        for _ in range(4)
    ]

    with anyio.fail_after(60):
        assert [await process.wait() for process in processes] == [0, 0, 0, 0]
    async with sql_repository(unmigrated_url) as repo:
        await repo.ping()


def ours(item: object, name: str | None, type_: str, reflected: bool, other: object) -> bool:
    """Whether a schema item belongs to the tables this adapter declares (others have theirs)."""
    table = item if type_ == "table" else getattr(item, "table", None)
    return not isinstance(table, sa.Table) or table.name in metadata.tables


async def test_the_migrated_schema_matches_the_tables_the_adapter_queries(sql_url: str) -> None:
    engine = create_engine(sql_url)
    try:
        async with engine.connect() as connection:
            differences = await connection.run_sync(
                lambda sync: compare_metadata(
                    MigrationContext.configure(sync, opts={"include_object": ours}), metadata
                )
            )
    finally:
        await engine.dispose()

    assert differences == []
