"""The key, IP rule, audit and usage contracts, run against the fakes, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import astuple, dataclass, replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import anyio
import pytest
import sqlalchemy as sa
import structlog
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from structlog.testing import capture_logs

from filewallball.adapters.caching import CachedKeyRepository
from filewallball.adapters.redis.cache import RedisCache
from filewallball.adapters.redis.client import create_redis
from filewallball.adapters.sql import (
    SqlAuditLog,
    SqlFileRepository,
    SqlIpRuleRepository,
    SqlKeyRepository,
    SqlStatsRepository,
    SqlUsageRepository,
    create_engine,
    metadata,
    upgrade,
)
from filewallball.adapters.sql import engine as sql_engine
from filewallball.domain.errors import (
    Conflict,
    DependencyUnavailable,
    InvalidRequest,
    QuotaExceeded,
)
from filewallball.domain.models import ByteSize, ContentType, FileId, Filename, FileRecord, Sha256
from filewallball.domain.policies import Quota, Reservation
from filewallball.domain.ports import (
    AuditLog,
    Cache,
    FileRepository,
    IpRuleRepository,
    KeyRepository,
    UploadStats,
    UsageRepository,
)
from filewallball.domain.security import (
    ApiKey,
    AuditEntry,
    AuditQuery,
    IpRule,
    IssuedKey,
    Outcome,
    Role,
    RuleAction,
    hash_secret,
)
from tests.conftest import REDIS_URL, terminate_backends
from tests.fakes import (
    FakeAuditLog,
    FakeFileRepository,
    FakeIpRuleRepository,
    FakeKeyRepository,
    FakeUsageRepository,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
PLUS_TWO = timezone(timedelta(hours=2))
SERVER_SECRET = b"s" * 32
UNSTORABLE = ("a\x00b", "\ud800")  # a NUL, and a lone surrogate that is not UTF-8


@dataclass
class Stores:
    keys: KeyRepository
    rules: IpRuleRepository
    audit: AuditLog
    usage: UsageRepository
    files: FileRepository


def migrated_url(request: pytest.FixtureRequest, tmp_path: Path, backend: str) -> str:
    if backend == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'filewallball.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    upgrade(url)
    return url


@pytest.fixture(params=["fake", "sqlite", "postgresql", "postgresql+redis"])
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> str | None:
    """None for the fakes, else the URL of a migrated database (made outside the event loop).

    "postgresql+redis" reads keys through the Redis cache (CachedKeyRepository).
    """
    if request.param == "fake":
        return None
    if request.param == "postgresql+redis":
        request.getfixturevalue("redis_server")
    return migrated_url(request, tmp_path, request.param.removesuffix("+redis"))


@pytest.fixture
async def key_cache(request: pytest.FixtureRequest) -> AsyncIterator[Cache | None]:
    if "+redis" not in request.node.callspec.params.get("backend_url", ""):
        yield None
        return
    client = create_redis(REDIS_URL)
    try:
        yield RedisCache(
            client, prefix=request.getfixturevalue("redis_prefix"), name="keys", ttl_seconds=60
        )
    finally:
        await client.aclose()


@pytest.fixture(params=["sqlite", "postgresql"])
def sql_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return migrated_url(request, tmp_path, request.param)


@pytest.fixture
async def stores(backend_url: str | None, key_cache: Cache | None) -> AsyncIterator[Stores]:
    if backend_url is None:
        files = FakeFileRepository()
        yield Stores(
            FakeKeyRepository(),
            FakeIpRuleRepository(),
            FakeAuditLog(),
            FakeUsageRepository(files),
            files,
        )
        return
    engine = create_engine(backend_url)
    try:
        keys: KeyRepository = SqlKeyRepository(engine)
        if key_cache is not None:
            keys = CachedKeyRepository(keys, cache=key_cache)
        yield Stores(
            keys,
            SqlIpRuleRepository(engine),
            SqlAuditLog(engine),
            SqlUsageRepository(engine),
            SqlFileRepository(engine),
        )
    finally:
        await engine.dispose()


def make_key(key_id: str | None = None, **changes: Any) -> ApiKey:
    key = ApiKey(
        id=key_id or IssuedKey.generate().key_id,
        name="ci",
        role=Role.UPLOADER,
        owner="team-a",
        secret_hash=hash_secret("fwb_secret", SERVER_SECRET),
        created_at=T0,
    )
    return replace(key, **changes)


def times_of(key: ApiKey) -> list[datetime]:
    moments = (key.created_at, key.expires_at, key.revoked_at, key.last_used_at)
    return [m for m in moments if m is not None]


# --- API keys ---------------------------------------------------------------------------------


async def test_a_key_round_trips_with_every_field(stores: Stores) -> None:
    issued = IssuedKey.generate()
    key = ApiKey(
        id=issued.key_id,
        name="Déploiement CI — 日本 ✓",
        role=Role.ADMIN,
        owner="team-ü",
        secret_hash=hash_secret(issued.secret, SERVER_SECRET),
        created_at=datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=UTC),
        expires_at=datetime(2027, 1, 1, 12, tzinfo=PLUS_TWO),
        revoked_at=datetime(2026, 5, 1, 1, 2, 3, 4, tzinfo=UTC),
        last_used_at=datetime(2026, 4, 1, tzinfo=UTC),
        allowed_cidrs=("10.0.0.0/8", "2001:db8::/32", "192.0.2.7/32"),
        quota_bytes=2**40 + 1,
        quota_files=10**12,
    )
    plain = make_key()
    await stores.keys.add(key)
    await stores.keys.add(plain)

    stored = await stores.keys.get(key.id)

    assert stored is not None and astuple(stored) == astuple(key)
    assert stored.expires_at == datetime(2027, 1, 1, 10, tzinfo=UTC)
    assert all(moment.utcoffset() == timedelta(0) for moment in times_of(stored))
    assert stored.matches(issued.secret, SERVER_SECRET)
    assert await stores.keys.get(plain.id) == plain
    assert await stores.keys.get(IssuedKey.generate().key_id) is None


async def test_adding_a_key_id_twice_is_a_conflict(stores: Stores) -> None:
    key = make_key()
    await stores.keys.add(key)

    with pytest.raises(Conflict):
        await stores.keys.add(replace(key, name="impostor", role=Role.ADMIN))

    assert await stores.keys.get(key.id) == key
    assert await stores.keys.count() == 1


# Bytewise order puts "-" < "0" < "B" < "Z" < "_" < "a": locales would not.
KEY_IDS = ["a" * 12, "B" * 12, "_" * 12, "-" * 12, "Z" * 12, "aB-_" * 3, "0" * 12]


async def walk_keys(keys: KeyRepository, limit: int, after: str | None = None) -> list[str]:
    """Every page of the key listing, each starting after the last id of the one before."""
    ids: list[str] = []
    for _ in range(100):
        page = await keys.list(limit=limit, after=after)
        assert len(page) <= limit
        ids += [key.id for key in page]
        if len(page) < limit:
            return ids
        after = page[-1].id
    raise AssertionError("the pages never ended")


async def test_keys_are_listed_by_id_page_by_page(stores: Stores) -> None:
    for key_id in KEY_IDS:
        await stores.keys.add(make_key(key_id))

    for limit in (1, 2, 3, len(KEY_IDS), 50):
        assert await walk_keys(stores.keys, limit) == sorted(KEY_IDS), f"limit {limit}"
    # `after` need not be a stored id.
    assert await walk_keys(stores.keys, 2, after="Y") == ["Z" * 12, "_" * 12, "aB-_" * 3, "a" * 12]
    assert await stores.keys.list(limit=0) == []
    assert await stores.keys.list(limit=3, after="b") == []


@pytest.mark.parametrize("after", UNSTORABLE)
async def test_listing_after_an_id_no_key_can_have_is_an_invalid_cursor(
    stores: Stores, after: str
) -> None:
    with pytest.raises(InvalidRequest) as raised:
        await stores.keys.list(limit=10, after=after)

    assert raised.value.code == "invalid_cursor"


async def test_revoking_is_idempotent_and_keeps_the_first_time(stores: Stores) -> None:
    key, other = make_key(), make_key()
    await stores.keys.add(key)
    await stores.keys.add(other)
    first_time = datetime(2026, 2, 1, 12, tzinfo=PLUS_TWO)

    first = await stores.keys.revoke(key.id, at=first_time)
    again = await stores.keys.revoke(key.id, at=first_time + timedelta(days=1))

    assert first == again == replace(key, revoked_at=first_time)
    assert first is not None and first.revoked_at is not None
    assert first.revoked_at.utcoffset() == timedelta(0)
    assert not first.is_active(first_time)
    assert await stores.keys.get(key.id) == first
    assert await stores.keys.get(other.id) == other
    assert await stores.keys.revoke(IssuedKey.generate().key_id, at=first_time) is None


async def test_touch_records_the_latest_use(stores: Stores) -> None:
    key, other = make_key(), make_key()
    await stores.keys.add(key)
    await stores.keys.add(other)
    used = T0 + timedelta(hours=1)

    # Through a cache, last_used_at lags by design: the stored value is what is checked.
    stored = getattr(stores.keys, "uncached", stores.keys)
    await stores.keys.touch(key.id, at=used.astimezone(PLUS_TWO))
    assert await stored.get(key.id) == replace(key, last_used_at=used)

    await stores.keys.touch(key.id, at=used + timedelta(seconds=1))
    # A request that started earlier but finished later does not move the time back.
    await stores.keys.touch(key.id, at=used - timedelta(minutes=5))
    touched = await stored.get(key.id)

    assert touched == replace(key, last_used_at=used + timedelta(seconds=1))
    assert touched is not None and touched.last_used_at is not None
    assert touched.last_used_at.utcoffset() == timedelta(0)
    assert await stores.keys.get(other.id) == other

    await stores.keys.touch(IssuedKey.generate().key_id, at=used)  # unknown: nothing happens
    assert await stores.keys.count() == 2


async def test_count_counts_every_key_revoked_or_not(stores: Stores) -> None:
    assert await stores.keys.count() == 0
    keys = [make_key() for _ in range(3)]
    for key in keys:
        await stores.keys.add(key)
    await stores.keys.revoke(keys[0].id, at=T0)

    assert await stores.keys.count() == 3


@pytest.mark.parametrize("text", UNSTORABLE)
async def test_a_value_no_database_can_hold_matches_nothing(stores: Stores, text: str) -> None:
    await stores.keys.add(make_key())
    await stores.audit.record(AuditEntry(at=T0, action="key.create", outcome=Outcome.SUCCESS))

    assert await stores.keys.get(text) is None
    assert await stores.keys.revoke(text, at=T0) is None
    await stores.keys.touch(text, at=T0)
    assert not await stores.rules.remove(text)
    assert await stores.usage.stored_by(text) == (0, 0)
    for query in (AuditQuery(actor=text), AuditQuery(action=text), AuditQuery(target=text)):
        assert await stores.audit.query(query) == []


# --- IP rules ---------------------------------------------------------------------------------


def make_rule(rule_id: str, created_at: datetime, **changes: Any) -> IpRule:
    rule = IpRule(
        id=rule_id, cidr="10.0.0.0/8", action=RuleAction.ALLOW, note=None, created_at=created_at
    )
    return replace(rule, **changes)


async def test_rules_round_trip_in_creation_order(stores: Stores) -> None:
    later = T0 + timedelta(seconds=2)
    rules = [
        make_rule("b" * 32, later, cidr="2001:db8::/48", action=RuleAction.DENY, note="bots"),
        make_rule("z" * 32, T0, note="office — Zürich"),
        make_rule("B" * 32, later.astimezone(PLUS_TWO), cidr="192.0.2.7/32"),
    ]
    for rule in rules:
        await stores.rules.add(rule)

    listed = await stores.rules.list()

    # created_at first; the id (bytewise) breaks ties.
    assert [astuple(r) for r in listed] == [astuple(rules[i]) for i in (1, 2, 0)]
    assert all(r.created_at.utcoffset() == timedelta(0) for r in listed)


async def test_removing_a_rule_reports_whether_it_existed(stores: Stores) -> None:
    kept, removed = make_rule("kept", T0), make_rule("removed", T0 + timedelta(seconds=1))
    await stores.rules.add(kept)
    await stores.rules.add(removed)

    assert await stores.rules.remove(removed.id)
    assert not await stores.rules.remove(removed.id)
    assert not await stores.rules.remove("never-added")
    assert await stores.rules.list() == [kept]


async def test_adding_a_rule_id_twice_is_a_conflict(stores: Stores) -> None:
    rule = make_rule("r1", T0)
    await stores.rules.add(rule)

    with pytest.raises(Conflict):
        await stores.rules.add(replace(rule, cidr="0.0.0.0/0", action=RuleAction.DENY))

    assert await stores.rules.list() == [rule]


# --- audit log --------------------------------------------------------------------------------


def audit_catalogue() -> list[AuditEntry]:
    """Entries in the order they are recorded; the fourth has an earlier `at` (a skewed clock)."""
    rows = [
        ("alice", "file.upload", "f1", Outcome.SUCCESS, 0),
        ("bob", "file.download", "f1", Outcome.SUCCESS, 1),
        ("alice", "file.delete", "f2", Outcome.SUCCESS, 2),
        (None, "auth.denied", None, Outcome.DENIED, -1),
        ("bob", "file.upload", "f2", Outcome.FAILED, 3),
        ("alice", "file.download", "f1", Outcome.SUCCESS, 4),
        ("carol", "key.create", "k1", Outcome.SUCCESS, 5),
    ]
    return [
        AuditEntry(
            at=T0 + timedelta(minutes=minute, microseconds=n),
            action=action,
            outcome=outcome,
            actor=actor,
            key_id=None if actor is None else f"{actor:_<12}",
            client_ip="2001:db8::1" if n % 2 else "192.0.2.1",
            request_id=f"req-{n}",
            target=target,
            detail=None if n % 3 else f"détail {n}",
        )
        for n, (actor, action, target, outcome, minute) in enumerate(rows)
    ]


async def record_all(audit: AuditLog, entries: list[AuditEntry]) -> None:
    for entry in entries:
        await audit.record(entry)


async def walk_audit(audit: AuditLog, limit: int, **filters: Any) -> list[AuditEntry]:
    """Every page of a query, each continuing from the id of the last entry before."""
    entries: list[AuditEntry] = []
    cursor: int | None = None
    for _ in range(100):
        page = await audit.query(AuditQuery(limit=limit, cursor=cursor, **filters))
        assert len(page) <= limit
        entries += page
        if len(page) < limit:
            return entries
        cursor = page[-1].id
    raise AssertionError("the pages never ended")


def without_ids(entries: list[AuditEntry]) -> list[AuditEntry]:
    return [replace(e, id=None) for e in entries]


async def test_entries_come_back_newest_first_with_every_field_and_an_id(stores: Stores) -> None:
    entries = audit_catalogue()
    entries[0] = replace(entries[0], at=entries[0].at.astimezone(PLUS_TWO), id=999)
    await record_all(stores.audit, entries)

    stored = await stores.audit.query(AuditQuery(limit=100))

    assert [astuple(e) for e in without_ids(stored)] == [
        astuple(replace(e, id=None)) for e in reversed(entries)
    ]
    ids = [e.id for e in stored if e.id is not None]
    assert len(ids) == len(stored)
    assert ids == sorted(ids, reverse=True)
    assert len(set(ids)) == len(ids)
    assert all(e.at.utcoffset() == timedelta(0) for e in stored)
    assert await stores.audit.query(AuditQuery(limit=2)) == stored[:2]
    assert await stores.audit.query(AuditQuery(limit=0)) == []


@pytest.mark.parametrize(
    "filters",
    [
        {"actor": "alice"},
        {"actor": "Alice"},  # exact: case matters
        {"action": "file.upload"},
        {"action": "file"},  # exact: not a prefix
        {"target": "f1"},
        {"actor": "bob", "target": "f2"},
        {"actor": "alice", "action": "file.download", "target": "f1"},
        {"actor": "nobody"},
    ],
)
async def test_filters_match_exactly_and_combine(stores: Stores, filters: dict[str, Any]) -> None:
    entries = audit_catalogue()
    await record_all(stores.audit, entries)
    expected = [e for e in reversed(entries) if all(getattr(e, k) == v for k, v in filters.items())]

    assert without_ids(await stores.audit.query(AuditQuery(**filters))) == expected
    assert without_ids(await walk_audit(stores.audit, 1, **filters)) == expected


async def test_since_includes_and_until_excludes_its_moment(stores: Stores) -> None:
    entries = audit_catalogue()
    await record_all(stores.audit, entries)
    since, until = entries[1].at, entries[5].at

    def between(start: datetime | None, end: datetime | None) -> list[AuditEntry]:
        return [
            e
            for e in reversed(entries)
            if (start is None or e.at >= start) and (end is None or e.at < end)
        ]

    for start, end in [(since, None), (None, until), (since, until)]:
        for zone in (UTC, PLUS_TWO):
            query = AuditQuery(
                since=start.astimezone(zone) if start else None,
                until=end.astimezone(zone) if end else None,
            )
            got = without_ids(await stores.audit.query(query))
            assert got == between(start, end), (start, end, zone)
    assert len(between(since, until)) == 3
    assert await stores.audit.query(AuditQuery(since=until, until=since)) == []


async def test_cursor_pages_have_no_gaps_or_duplicates(stores: Stores) -> None:
    entries = audit_catalogue()
    await record_all(stores.audit, entries)
    everything = await stores.audit.query(AuditQuery(limit=100))

    for limit in (1, 2, 3, len(entries), 50):
        assert await walk_audit(stores.audit, limit) == everything, f"limit {limit}"
    alice = [e for e in everything if e.actor == "alice"]
    assert await walk_audit(stores.audit, 2, actor="alice") == alice
    assert len(alice) == 3


async def test_cursors_outside_the_ids_are_no_error(stores: Stores) -> None:
    await record_all(stores.audit, audit_catalogue())
    everything = await stores.audit.query(AuditQuery(limit=100))
    oldest = everything[-1].id
    assert oldest is not None

    assert await stores.audit.query(AuditQuery(limit=100, cursor=2**70)) == everything
    for cursor in (oldest, 1, 0, -(2**70)):
        assert await stores.audit.query(AuditQuery(cursor=cursor)) == []
    assert await stores.audit.query(AuditQuery(limit=2**70)) == everything


async def test_a_batch_of_entries_is_stored_in_order_with_every_field(stores: Stores) -> None:
    batch = [
        AuditEntry(
            at=T0 + timedelta(seconds=n),
            action="file.download",
            outcome=Outcome.SUCCESS,
            actor="ann",
            key_id="abcdef012345",
            client_ip="10.0.0.1",
            request_id=f"r{n}",
            target=f"f{n}",
            bytes=n,
        )
        for n in range(3)
    ]
    record_many = stores.audit.record_many  # type: ignore[attr-defined]
    await record_many(batch)
    await record_many([])
    await stores.audit.flush()
    stored = list(reversed(await stores.audit.query(AuditQuery())))
    assert [replace(e, id=None) for e in stored] == batch
    assert [e.id for e in stored] == sorted(e.id for e in stored)


async def test_each_entry_is_also_logged_as_an_audit_event(stores: Stores) -> None:
    entries = audit_catalogue()[:3]
    with capture_logs() as logs:
        await record_all(stores.audit, entries)
    stored = list(reversed(await stores.audit.query(AuditQuery())))

    assert logs == [
        {
            "event": "audit",
            "log_level": "info",
            "id": e.id,
            "at": e.at.isoformat(),
            "action": e.action,
            "outcome": e.outcome.value,
            "actor": e.actor,
            "key_id": e.key_id,
            "client_ip": e.client_ip,
            "request_id": e.request_id,
            "target": e.target,
            "detail": e.detail,
            "bytes": e.bytes,
        }
        for e in stored
    ]


@pytest.fixture
def stdlib_structlog() -> Iterator[None]:
    """structlog on standard-library loggers, as in production, so events carry a logger name."""
    saved = structlog.get_config()
    structlog.configure(
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
    )
    try:
        yield
    finally:
        structlog.configure(**saved)


@pytest.mark.usefixtures("stdlib_structlog")
async def test_audit_events_come_from_the_audit_logger(stores: Stores) -> None:
    with capture_logs(processors=[structlog.stdlib.add_logger_name]) as logs:
        await stores.audit.record(AuditEntry(at=T0, action="key.create", outcome=Outcome.SUCCESS))

    assert [(e["logger"], e["event"]) for e in logs] == [("filewallball.audit", "audit")]


# --- usage ------------------------------------------------------------------------------------


async def noop() -> None:
    return None


def make_file(owner: str | None, size: int, sha256: Sha256) -> FileRecord:
    return FileRecord(
        id=FileId.new(),
        filename=Filename("data.bin"),
        size=ByteSize(size),
        content_type=ContentType.OCTET_STREAM,
        sha256=sha256,
        created_at=T0,
        owner=owner,
    )


async def test_usage_sums_the_files_an_owner_stores_now(stores: Stores) -> None:
    shared = Sha256("a" * 64)
    big = make_file("team-a", 2**33, shared)
    records = [
        big,
        make_file("team-a", 10, Sha256("b" * 64)),
        make_file("team-b", 5, shared),  # the same bytes count for each owner
        make_file(None, 7, Sha256("c" * 64)),
    ]
    for record in records:
        async with stores.files.unit_of_work() as work:
            await work.add(record)
            await work.commit()

    assert await stores.usage.stored_by("team-a") == (2, 2**33 + 10)
    assert await stores.usage.stored_by("team-b") == (1, 5)
    assert await stores.usage.stored_by("TEAM-A") == (0, 0)
    assert await stores.usage.stored_by("nobody") == (0, 0)

    await stores.files.remove(big.id)
    assert await stores.usage.stored_by("team-a") == (1, 10)


async def _reserve_many(
    stores: Stores, quota: Quota, sizes: list[int | None]
) -> list[Reservation | None]:
    """Reservations made at once; None where the quota refused one."""

    async def one(size: int | None) -> Reservation | None:
        try:
            return await stores.usage.reserve(
                "team-q", quota, size=size, now=T0, until=T0 + timedelta(hours=1)
            )
        except QuotaExceeded:
            return None

    return list(await asyncio.gather(*(one(size) for size in sizes)))


async def test_concurrent_reservations_never_pass_a_files_quota(stores: Stores) -> None:
    async with stores.files.unit_of_work() as work:
        await work.add(make_file("team-q", 10, Sha256("d" * 64)))
        await work.commit()
    made = await _reserve_many(stores, Quota(files=4), [None] * 20)
    granted = [r for r in made if r is not None]
    assert len(granted) == 3  # one file stored: room for three more
    await stores.usage.release(granted[0])
    assert len([r for r in await _reserve_many(stores, Quota(files=4), [None] * 5) if r]) == 1


async def test_concurrent_reservations_never_pass_a_byte_quota(stores: Stores) -> None:
    mib = 1024 * 1024
    made = await _reserve_many(stores, Quota(bytes=5 * mib), [mib] * 20)
    granted = [r for r in made if r is not None]
    assert len(granted) == 5
    assert all(r.bytes == mib for r in granted)
    for reservation in granted:
        await stores.usage.release(reservation)
    # An upload of unknown size holds all the room left, until it ends: one beside it gets
    # none (it may store an empty file, and is refused at its first byte).
    held = await _reserve_many(stores, Quota(bytes=5 * mib), [None, None])
    assert sorted(r.bytes or 0 for r in held if r is not None) == [0, 5 * mib]


async def test_expired_reservations_stop_counting_and_are_dropped(stores: Stores) -> None:
    quota = Quota(files=1)
    await stores.usage.reserve("team-q", quota, size=None, now=T0, until=T0 + timedelta(minutes=1))
    with pytest.raises(QuotaExceeded):
        await stores.usage.reserve(
            "team-q", quota, size=None, now=T0, until=T0 + timedelta(hours=1)
        )
    later = T0 + timedelta(minutes=2)  # the first upload's process died: its room came back
    await stores.usage.reserve(
        "team-q", quota, size=None, now=later, until=later + timedelta(hours=1)
    )
    assert await stores.usage.drop_expired_reservations(now=later) == 1
    assert await stores.usage.drop_expired_reservations(now=later) == 0


# --- SQL only ---------------------------------------------------------------------------------


async def test_the_migrated_schema_matches_every_table_the_adapters_query(sql_url: str) -> None:
    engine = create_engine(sql_url)
    try:
        async with engine.connect() as connection:
            differences = await connection.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync), metadata)
            )
    finally:
        await engine.dispose()

    assert differences == []


async def test_postgresql_orders_ids_bytewise_whatever_its_locale(
    pg_natural_language_url: str,
) -> None:
    await anyio.to_thread.run_sync(upgrade, pg_natural_language_url)
    engine = create_engine(pg_natural_language_url)
    try:
        keys, rules = SqlKeyRepository(engine), SqlIpRuleRepository(engine)
        for key_id in KEY_IDS:
            await keys.add(make_key(key_id))
            await rules.add(make_rule(key_id, T0))

        assert await walk_keys(keys, 2) == sorted(KEY_IDS)
        assert [rule.id for rule in await rules.list()] == sorted(KEY_IDS)
    finally:
        await engine.dispose()


@pytest.fixture
def migrated_pg_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return migrated_url(request, tmp_path, "postgresql")


async def test_a_dead_pooled_connection_is_retried_once_by_every_repository(
    migrated_pg_url: str, pg_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a database restart the pool may hand out a connection whose end the event loop has
    not seen yet: its first statement fails, and the operation runs again on a fresh connection.
    The per-request key lookup must not answer one 503 per pooled connection."""
    # The pool's check misses every dead connection (no idle ping either, however slow the
    # machine), so each operation below meets one: the retry is what makes it succeed.
    monkeypatch.setattr(sql_engine, "_known_closed", lambda _connection: False)
    monkeypatch.setattr(sql_engine, "IDLE_PING_SECONDS", float("inf"))
    database = sa.make_url(migrated_pg_url).database
    engine = create_engine(migrated_pg_url)
    keys, rules = SqlKeyRepository(engine), SqlIpRuleRepository(engine)
    audit, usage = SqlAuditLog(engine), SqlUsageRepository(engine)
    stats = SqlStatsRepository(engine)
    key, rule = make_key(), make_rule("r" * 32, T0)
    entry = AuditEntry(at=T0, action="file.upload", outcome=Outcome.SUCCESS, key_id=key.id)
    try:
        await keys.add(key)  # a pooled connection, which the server then drops
        await terminate_backends(pg_server, database)
        assert await keys.get(key.id) == key

        steps: list[tuple[Callable[[], Awaitable[object]], object]] = [
            (lambda: keys.touch(key.id, at=T0), None),
            (lambda: keys.get(key.id), replace(key, last_used_at=T0)),
            (lambda: rules.add(rule), None),
            (rules.list, [rule]),
            (lambda: audit.record(entry), None),
            (lambda: audit.query(AuditQuery()), [replace(entry, id=1)]),
            (lambda: usage.stored_by("team-a"), (0, 0)),
            (
                lambda: stats.uploads(since=T0),
                UploadStats(succeeded=1, failed=0, errors_by_reason={}),
            ),
        ]
        for operation, expected in steps:
            await terminate_backends(pg_server, database)
            assert await operation() == expected  # once each: one entry, one rule
    finally:
        await engine.dispose()


@pytest.mark.parametrize("where", ["postgresql", "sqlite"])
async def test_every_operation_is_unavailable_without_the_database(
    where: str, tmp_path: Path
) -> None:
    url = {
        "postgresql": "postgresql+asyncpg://postgres@127.0.0.1:1/x",
        "sqlite": f"sqlite+aiosqlite:///{tmp_path}",  # a directory: it cannot be opened
    }[where]
    engine = create_engine(url)
    keys, rules = SqlKeyRepository(engine), SqlIpRuleRepository(engine)
    audit, usage = SqlAuditLog(engine), SqlUsageRepository(engine)
    entry = AuditEntry(at=T0, action="auth.denied", outcome=Outcome.DENIED)
    operations: list[Callable[[], Awaitable[object]]] = [
        lambda: keys.add(make_key()),
        lambda: keys.get("k"),
        lambda: keys.list(limit=10),
        lambda: keys.revoke("k", at=T0),
        lambda: keys.touch("k", at=T0),
        keys.count,
        lambda: rules.add(make_rule("r", T0)),
        rules.list,
        lambda: rules.remove("r"),
        lambda: audit.record(entry),
        lambda: audit.query(AuditQuery()),
        lambda: usage.stored_by("team-a"),
    ]
    try:
        with capture_logs() as logs:
            for operation in operations:
                with anyio.fail_after(10), pytest.raises(DependencyUnavailable) as raised:
                    await operation()
                assert raised.value.dependency == "database"
    finally:
        await engine.dispose()

    # The audit event is logged all the same, without an id since nothing was stored.
    audit_events = [e for e in logs if e["event"] == "audit"]
    assert [(e["action"], e["id"]) for e in audit_events] == [("auth.denied", None)]
