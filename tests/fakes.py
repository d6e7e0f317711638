"""In-memory fakes of the ports: small working implementations, checked by the contract suites."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from types import TracebackType

from filewallball.adapters.sql import log_audit_event
from filewallball.domain.errors import Conflict, DependencyUnavailable, InvalidRequest
from filewallball.domain.jobs import JobPayload, TaskQueue
from filewallball.domain.models import (
    ContentType,
    Cursor,
    FileId,
    FileRecord,
    ListQuery,
    Page,
    ResumableUpload,
    Segment,
    Sha256,
    SortKey,
    ThumbnailStatus,
    UploadId,
    Visibility,
)
from filewallball.domain.policies import Quota, Reservation
from filewallball.domain.ports import (
    AuditLog,
    BlobReader,
    BlobStore,
    Cache,
    Cached,
    CacheStats,
    Clock,
    FileRepository,
    FileUnitOfWork,
    IpRuleRepository,
    KeyRepository,
    Lock,
    PartStore,
    ResumableRepository,
    Sniffer,
    StagedBlob,
    StorageTotals,
    UsageRepository,
)
from filewallball.domain.security import ApiKey, AuditEntry, AuditQuery, IpRule


class FakeFileRepository(FileRepository):
    def __init__(self) -> None:
        self.records: dict[FileId, FileRecord] = {}
        self.refcounts: dict[Sha256, int] = {}
        self._lock = asyncio.Lock()

    def unit_of_work(self) -> FakeFileUnitOfWork:
        return FakeFileUnitOfWork(self)

    async def get(self, file_id: FileId) -> FileRecord | None:
        return self.records.get(file_id)

    async def remove(self, file_id: FileId) -> FileRecord | None:
        async with self._lock:
            record = self.records.pop(file_id, None)
            if record is not None:
                self.refcounts[record.sha256] -= 1
            return record

    async def expect_blob(self, sha256: Sha256, *, at: datetime) -> None:
        self.refcounts.setdefault(sha256, 0)

    async def unreferenced_blobs(self) -> list[Sha256]:
        return [sha for sha, count in self.refcounts.items() if count == 0]

    async def list(self, query: ListQuery) -> Page[FileRecord]:
        items = [r for r in self.records.values() if _matches(r, query)]
        items.sort(key=lambda r: (_sort_value(r, query.sort), r.id), reverse=query.sort.descending)
        if query.cursor is not None:
            mark = (query.cursor.value, query.cursor.last_id)
            if query.sort.descending:
                items = [r for r in items if (_sort_value(r, query.sort), r.id) < mark]
            else:
                items = [r for r in items if (_sort_value(r, query.sort), r.id) > mark]
        page = items[: query.limit]
        next_cursor = None
        if len(items) > query.limit:
            last = page[-1]
            next_cursor = Cursor(query.sort, _sort_value(last, query.sort), last.id)
        return Page(items=page, next_cursor=next_cursor)

    async def trash(self, file_id: FileId, *, at: datetime) -> FileRecord | None:
        record = self.records.get(file_id)
        if record is None or record.deleted_at is not None:
            return None
        record = self.records[file_id] = replace(record, deleted_at=at)
        return record

    async def restore(self, file_id: FileId) -> FileRecord | None:
        record = self.records.get(file_id)
        if record is None or record.deleted_at is None:
            return None
        record = self.records[file_id] = replace(record, deleted_at=None)
        return record

    async def due_for_removal(
        self, *, now: datetime, trashed_before: datetime, limit: int
    ) -> tuple[FileId, ...]:
        due = [
            r.id
            for r in self.records.values()
            if (r.expires_at is not None and r.expires_at <= now)
            or (r.deleted_at is not None and r.deleted_at <= trashed_before)
        ]
        return tuple(due[:limit])

    async def referenced_blobs(self, *, after: Sha256 | None, limit: int) -> tuple[Sha256, ...]:
        shas = sorted(
            sha
            for sha, count in self.refcounts.items()
            if count > 0 and (after is None or sha > after)
        )
        return tuple(shas[:limit])

    async def set_thumbnail_status(self, file_id: FileId, status: ThumbnailStatus) -> None:
        record = self.records.get(file_id)
        if record is not None:
            self.records[file_id] = replace(record, thumbnail_status=status)

    async def ping(self) -> None:
        return None


class FakeFileUnitOfWork(FileUnitOfWork):
    """The repository's lock for the whole unit (as the database locks the blob's row); what is
    staged applies at commit, and is dropped otherwise."""

    def __init__(self, repository: FakeFileRepository) -> None:
        self._repository = repository
        self._added: list[FileRecord] = []
        self._forgotten: list[Sha256] = []

    async def __aenter__(self) -> FakeFileUnitOfWork:
        await self._repository._lock.acquire()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._repository._lock.release()

    async def add(self, record: FileRecord) -> None:
        self._added.append(record)

    async def forget_blob(self, sha256: Sha256) -> bool:
        refcounts = self._repository.refcounts
        if refcounts.get(sha256, 0) != 0 or sha256 not in refcounts:
            return False
        self._forgotten.append(sha256)
        return True

    async def commit(self) -> None:
        repository = self._repository
        for record in self._added:
            repository.refcounts[record.sha256] = repository.refcounts.get(record.sha256, 0) + 1
            repository.records[record.id] = record
        for sha256 in self._forgotten:
            del repository.refcounts[sha256]
        self._added, self._forgotten = [], []


def _sort_value(record: FileRecord, sort: SortKey) -> str | int:
    if sort.column == "size":
        return int(record.size)
    if sort.column == "filename":
        return str(record.filename)
    return record.created_at.astimezone(UTC).isoformat()


def _matches(record: FileRecord, query: ListQuery) -> bool:
    if (record.deleted_at is not None) != query.trash:
        return False
    if query.now is not None and record.expires_at is not None and record.expires_at <= query.now:
        return False
    if query.owner is not None and record.owner != query.owner:
        return False
    if query.visible_to is not None and not (
        record.owner == query.visible_to or record.visibility is Visibility.PUBLIC
    ):
        return False
    if query.content_type is not None and not record.content_type.matches(query.content_type):
        return False
    if query.name_contains is not None:
        return query.name_contains.casefold() in record.filename.casefold()
    return True


@dataclass
class FakeBlobReader(BlobReader):
    data: bytes
    size: int = 0
    closed: bool = False
    path: str | None = None

    def __post_init__(self) -> None:
        self.size = len(self.data)

    async def chunks(self, start: int, length: int) -> AsyncIterator[bytes]:
        view = self.data[start : start + length]
        for offset in range(0, len(view), 7):
            yield view[offset : offset + 7]

    async def close(self) -> None:
        self.closed = True


@dataclass
class FakeStagedBlob(StagedBlob):
    store: FakeBlobStore
    data: bytes
    size: int = 0
    done: bool = False

    def __post_init__(self) -> None:
        self.size = len(self.data)

    async def publish(self, sha256: Sha256) -> None:
        self.store.blobs[sha256] = self.data
        self.store.staged.discard(id(self))
        self.done = True

    async def discard(self) -> None:
        self.store.staged.discard(id(self))
        self.done = True


@dataclass
class FakeBlobStore(BlobStore):
    blobs: dict[Sha256, bytes] = field(default_factory=dict)
    staged: set[int] = field(default_factory=set)

    async def stage(self, chunks: AsyncIterator[bytes]) -> StagedBlob:
        data = bytearray()
        async for chunk in chunks:
            data += chunk
        blob = FakeStagedBlob(self, bytes(data))
        self.staged.add(id(blob))
        return blob

    async def open(self, sha256: Sha256) -> BlobReader | None:
        data = self.blobs.get(sha256)
        return None if data is None else FakeBlobReader(data)

    async def delete(self, sha256: Sha256) -> None:
        self.blobs.pop(sha256, None)

    async def exists(self, sha256: Sha256) -> bool:
        return sha256 in self.blobs

    async def sweep(self, *, older_than_seconds: float) -> int:
        return 0

    async def check_writable(self) -> None:
        return None

    async def free_bytes(self) -> int | None:
        return None

    async def download_url(
        self, sha256: Sha256, *, content_type: str, content_disposition: str
    ) -> str | None:
        return None

    async def aclose(self) -> None:
        return None


class FakeSniffer(Sniffer):
    """Knows PNG and JPEG by their magic numbers; UTF-8 is text; anything else is binary."""

    async def sniff(self, head: bytes) -> ContentType:
        if head.startswith(b"\x89PNG\r\n\x1a\n"):
            return ContentType("image/png")
        if head.startswith(b"\xff\xd8\xff"):
            return ContentType("image/jpeg")
        try:
            head.decode("utf-8")
        except UnicodeDecodeError:
            return ContentType.OCTET_STREAM
        return ContentType("text/plain")


class FakeClock(Clock):
    """A clock that moves one second each time it is read."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)

    def now(self) -> datetime:
        self._now += timedelta(seconds=1)
        return self._now


async def stream(data: bytes, chunk_size: int = 1000) -> AsyncIterator[bytes]:
    for offset in range(0, len(data), chunk_size):
        yield data[offset : offset + chunk_size]


class FakeKeyRepository(KeyRepository):
    def __init__(self) -> None:
        self.keys: dict[str, ApiKey] = {}

    async def add(self, key: ApiKey) -> None:
        if key.id in self.keys:
            raise Conflict(f"an API key with the id {key.id} exists")
        self.keys[key.id] = replace(
            key,
            created_at=key.created_at.astimezone(UTC),
            expires_at=_utc_or_none(key.expires_at),
            revoked_at=_utc_or_none(key.revoked_at),
            last_used_at=_utc_or_none(key.last_used_at),
        )

    async def get(self, key_id: str) -> ApiKey | None:
        return self.keys.get(key_id)

    async def list(self, *, limit: int, after: str | None = None) -> list[ApiKey]:
        if after is not None and not _storable(after):
            raise InvalidRequest("the cursor is not valid", code="invalid_cursor")
        ids = sorted(k for k in self.keys if after is None or k > after)
        return [self.keys[k] for k in ids[: max(limit, 0)]]

    async def revoke(self, key_id: str, *, at: datetime) -> ApiKey | None:
        key = self.keys.get(key_id)
        if key is not None and key.revoked_at is None:
            key = self.keys[key_id] = replace(key, revoked_at=at.astimezone(UTC))
        return key

    async def touch(self, key_id: str, *, at: datetime) -> None:
        key = self.keys.get(key_id)
        if key is not None and (key.last_used_at is None or key.last_used_at < at):
            self.keys[key_id] = replace(key, last_used_at=at.astimezone(UTC))

    async def count(self) -> int:
        return len(self.keys)


class FakeIpRuleRepository(IpRuleRepository):
    def __init__(self) -> None:
        self.rules: dict[str, IpRule] = {}

    async def add(self, rule: IpRule) -> None:
        if rule.id in self.rules:
            raise Conflict(f"an IP rule with the id {rule.id} exists")
        self.rules[rule.id] = replace(rule, created_at=rule.created_at.astimezone(UTC))

    async def list(self) -> list[IpRule]:
        return sorted(self.rules.values(), key=lambda r: (r.created_at, r.id))

    async def remove(self, rule_id: str) -> bool:
        return self.rules.pop(rule_id, None) is not None


class FakeAuditLog(AuditLog):
    """Keeps every entry, numbered from 1, and logs each one like the SQL log does."""

    def __init__(self) -> None:
        self.entries: list[AuditEntry] = []
        self.fail_writes = False  # the database is down

    async def record(self, entry: AuditEntry) -> None:
        await self.record_many([entry])
        log_audit_event(self.entries[-1])

    async def query(self, query: AuditQuery) -> list[AuditEntry]:
        newest_first = [e for e in reversed(self.entries) if _audit_matches(e, query)]
        return newest_first[: max(query.limit, 0)]

    async def record_many(self, entries: Sequence[AuditEntry]) -> None:
        """Like SqlAuditLog.record_many: all or none, and not logged (the caller logs)."""
        if self.fail_writes:
            raise DependencyUnavailable("database")
        for entry in entries:
            numbered = replace(entry, id=len(self.entries) + 1, at=entry.at.astimezone(UTC))
            self.entries.append(numbered)

    async def flush(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


def _audit_matches(entry: AuditEntry, query: AuditQuery) -> bool:
    assert entry.id is not None
    return (
        query.actor in (None, entry.actor)
        and query.action in (None, entry.action)
        and query.target in (None, entry.target)
        and (query.since is None or entry.at >= query.since)
        and (query.until is None or entry.at < query.until)
        and (query.cursor is None or entry.id < query.cursor)
    )


class FakeUsageRepository(UsageRepository):
    """Sums the records of a FakeFileRepository, as the SQL one sums the files table."""

    def __init__(self, files: FakeFileRepository) -> None:
        self.files = files
        self.reservations: dict[str, tuple[Reservation, datetime]] = {}
        self._reserved = 0

    async def stored_by(self, owner: str) -> tuple[int, int]:
        owned = [r for r in self.files.records.values() if r.owner == owner]
        return len(owned), sum(r.size for r in owned)

    async def reserve(
        self, owner: str, quota: Quota, *, size: int | None, now: datetime, until: datetime
    ) -> Reservation:
        stored_files, stored_bytes = await self.stored_by(owner)
        live = [
            r for r, expires in self.reservations.values() if r.owner == owner and expires > now
        ]
        held_bytes = sum(r.bytes or 0 for r in live)
        room = quota.room(
            stored_files=stored_files + len(live), stored_bytes=stored_bytes + held_bytes
        )
        amount = size if size is not None else room
        Quota.check_size(amount or 0, room)
        self._reserved += 1
        reservation = Reservation(id=f"r{self._reserved}", owner=owner, bytes=amount)
        self.reservations[reservation.id] = (reservation, until)
        return reservation

    async def release(self, reservation: Reservation) -> None:
        self.reservations.pop(reservation.id, None)

    async def drop_expired_reservations(self, *, now: datetime) -> int:
        expired = [key for key, (_, expires) in self.reservations.items() if expires <= now]
        for key in expired:
            del self.reservations[key]
        return len(expired)

    async def totals(self) -> StorageTotals:
        records = list(self.files.records.values())
        distinct = {r.sha256: r.size for r in records}
        return StorageTotals(
            files=len(records),
            logical_bytes=sum(r.size for r in records),
            blobs=len(distinct),
            stored_bytes=sum(distinct.values()),
        )


def _utc_or_none(moment: datetime | None) -> datetime | None:
    return None if moment is None else moment.astimezone(UTC)


def _storable(text: str) -> bool:
    """Whether a database could hold `text` (no NUL, valid UTF-8), as the SQL adapters check."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return "\x00" not in text


class FakeTaskQueue(TaskQueue):
    """Records what was queued; runs nothing."""

    def __init__(self) -> None:
        self.queued: list[tuple[str, str, JobPayload]] = []

    async def enqueue(self, name: str, *, key: str, payload: JobPayload) -> None:
        if not any(n == name and k == key for n, k, _ in self.queued):
            self.queued.append((name, key, payload))

    async def ping(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


class FakeCache(Cache):
    """One process's exact cache: tombstones block fills, a generation stands for the epoch.

    `lose_everything()` is what a Redis restart or a lapsed lease does: copies and fences go.
    """

    def __init__(self, *, ttl_seconds: int = 300) -> None:
        self._ttl = ttl_seconds
        self._entries: dict[str, tuple[float, bytes]] = {}
        self._generation = 0
        self.hits = 0
        self.misses = 0
        self._since: datetime | None = None

    async def lookup(self, key: str) -> Cached:
        if self._since is None:
            self._since = datetime.now(UTC)
        entry = self._entries.get(key)
        if entry is not None and entry[0] <= time.monotonic():
            del self._entries[key]
            entry = None
        if entry is None:
            self.misses += 1
            return Cached(None, fence=str(self._generation))
        if entry[1] == _TOMBSTONE:
            self.misses += 1
            return Cached(None)
        self.hits += 1
        return Cached(entry[1])

    async def fill(self, key: str, value: bytes, *, fence: str) -> None:
        entry = self._entries.get(key)
        if fence != str(self._generation) or (entry is not None and entry[0] > time.monotonic()):
            return
        self._entries[key] = (time.monotonic() + self._ttl, value)

    async def invalidate(self, key: str) -> None:
        self._entries[key] = (time.monotonic() + self._ttl, _TOMBSTONE)

    def lose_everything(self) -> None:
        self._entries.clear()
        self._generation += 1

    async def ping(self) -> None:
        return None

    async def stats(self) -> CacheStats:
        now = time.monotonic()
        live = sum(
            1 for expires, value in self._entries.values() if expires > now and value != _TOMBSTONE
        )
        return CacheStats(
            backend="memory",
            shared=False,
            hits=self.hits,
            misses=self.misses,
            entries=live,
            since=self._since,
        )


_TOMBSTONE = b"-"


@dataclass
class FakePartStore(PartStore):
    """Segments in a dict; `writes` counts stored segments (what a test can watch)."""

    segment_bytes: int = 64 * 1024
    segments: dict[tuple[str, str], tuple[bytes, float]] = field(default_factory=dict)
    writes: int = 0

    async def write(self, upload: UploadId, key: str, chunks: AsyncIterator[bytes]) -> int:
        _check_segment(upload, key)
        data = bytearray()
        async for chunk in chunks:
            data += chunk
            if len(data) > self.segment_bytes:
                raise ValueError(f"a segment of more than {self.segment_bytes} bytes")
        self.segments[(upload, key)] = (bytes(data), time.time())
        self.writes += 1
        return len(data)

    async def read(self, upload: UploadId, segments: Sequence[Segment]) -> AsyncIterator[bytes]:
        for segment in segments:
            _check_segment(upload, segment.key)
        for segment in segments:
            stored = self.segments.get((upload, segment.key))
            if stored is None or len(stored[0]) < segment.size:
                raise DependencyUnavailable("blob storage", f"segment {segment.key} is missing")
            data = stored[0][: segment.size]
            for offset in range(0, len(data), 1000):
                yield data[offset : offset + 1000]

    async def delete(self, upload: UploadId, keys: Sequence[str]) -> None:
        for key in keys:
            _check_segment(upload, key)
        for key in keys:
            self.segments.pop((upload, key), None)

    async def remove(self, upload: UploadId) -> None:
        _check_upload(upload)
        for held in [k for k in self.segments if k[0] == upload]:
            del self.segments[held]

    async def stale(self, *, older_than_seconds: float) -> list[UploadId]:
        newest: dict[str, float] = {}
        for (upload, _), (_, at) in self.segments.items():
            newest[upload] = max(at, newest.get(upload, 0.0))
        cutoff = time.time() - older_than_seconds
        return [UploadId(upload) for upload, at in newest.items() if at < cutoff]

    def held(self, upload: str) -> int:
        """How many segments of `upload` are stored."""
        return sum(1 for k in self.segments if k[0] == upload)


def _check_upload(upload: str) -> None:
    """ValueError, as the real stores, for what cannot be an upload id (it would reach a path)."""
    if UploadId.parse(upload) is None:
        raise ValueError(f"not an upload id: {upload!r}")


def _check_segment(upload: str, key: str) -> None:
    """ValueError, as the real stores, for a bad upload id or a key that is not one name."""
    _check_upload(upload)
    if not key or "/" in key or key.startswith("."):
        raise ValueError(f"not a segment key: {key!r}")


@dataclass
class _FakeResumable:
    upload: ResumableUpload
    segments: list[Segment] = field(default_factory=list)
    token: str | None = None
    until: datetime | None = None


@dataclass
class FakeResumableRepository(ResumableRepository):
    rows: dict[str, _FakeResumable] = field(default_factory=dict)

    async def add(self, upload: ResumableUpload) -> None:
        self.rows[upload.id] = _FakeResumable(upload)

    async def get(self, upload_id: UploadId) -> ResumableUpload | None:
        row = self.rows.get(upload_id)
        if row is None:
            return None
        return replace(row.upload, locked_until=row.until if row.token else None)

    async def count_open(self, owner: str | None, *, now: datetime) -> int:
        return sum(
            1
            for row in self.rows.values()
            if row.upload.owner == owner and not row.upload.complete and row.upload.expires_at > now
        )

    def _holds(self, upload_id: str, token: str) -> _FakeResumable | None:
        row = self.rows.get(upload_id)
        if row is None or row.token != token or row.upload.complete:
            return None
        return row

    async def lock(
        self, upload_id: UploadId, *, token: str, offset: int, now: datetime, until: datetime
    ) -> Lock:
        row = self.rows.get(upload_id)
        if row is None or row.upload.complete:
            return Lock.GONE
        if row.token is not None and row.until is not None and row.until > now:
            return Lock.HELD
        if row.upload.offset != offset:
            return Lock.MOVED
        row.token, row.until = token, until
        return Lock.ACQUIRED

    async def renew(self, upload_id: UploadId, *, token: str, until: datetime) -> bool:
        row = self._holds(upload_id, token)
        if row is None:
            return False
        row.until = until
        return True

    async def unlock(self, upload_id: UploadId, *, token: str) -> None:
        row = self._holds(upload_id, token)
        if row is not None:
            row.token = row.until = None

    async def append(self, upload_id: UploadId, *, token: str, segments: Sequence[Segment]) -> bool:
        row = self._holds(upload_id, token)
        if row is None or (segments and segments[0].start != row.upload.offset):
            return False
        row.segments.extend(segments)
        end = segments[-1].end if segments else row.upload.offset
        row.upload = replace(row.upload, offset=end)
        return True

    async def declare_length(
        self, upload_id: UploadId, *, token: str, length: int, reservation: Reservation | None
    ) -> bool:
        row = self._holds(upload_id, token)
        if row is None or row.upload.length is not None:
            return False
        row.upload = replace(
            row.upload,
            length=length,
            reservation_id=None if reservation is None else reservation.id,
            reservation_bytes=None if reservation is None else reservation.bytes,
        )
        return True

    async def segments(self, upload_id: UploadId) -> list[Segment]:
        row = self.rows.get(upload_id)
        return [] if row is None else list(row.segments)

    async def complete(
        self, upload_id: UploadId, *, token: str, segments: Sequence[Segment], file_id: FileId
    ) -> bool:
        if not await self.append(upload_id, token=token, segments=segments):
            return False
        row = self.rows[upload_id]
        row.segments = []
        row.token = row.until = None
        row.upload = replace(
            row.upload, file_id=file_id, reservation_id=None, reservation_bytes=None
        )
        return True

    async def remove(self, upload_id: UploadId) -> ResumableUpload | None:
        row = self.rows.pop(upload_id, None)
        return None if row is None else row.upload

    async def expired(self, *, now: datetime, limit: int) -> list[ResumableUpload]:
        due = [row.upload for row in self.rows.values() if row.upload.expires_at <= now]
        return sorted(due, key=lambda upload: upload.expires_at)[:limit]
