"""Ports: what the domain needs from the outside world, as Protocols over domain types."""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Protocol

from filewallball.domain.models import (
    ContentType,
    FileId,
    FileRecord,
    ImageFormat,
    ListQuery,
    Page,
    ResumableUpload,
    Segment,
    Sha256,
    ThumbnailStatus,
    UploadId,
)
from filewallball.domain.policies import Quota, Reservation
from filewallball.domain.rates import RateDecision, RateRule
from filewallball.domain.security import ApiKey, AuditEntry, AuditQuery, IpRule


class FileUnitOfWork(Protocol):
    """What commits together with the bytes: a record and its blob reference (an upload), or an
    unreferenced blob's row (its collection). `async with` it, do the work and the blob store's
    step, then `commit()`; leaving without committing rolls everything back.
    """

    async def __aenter__(self) -> FileUnitOfWork: ...

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...

    async def add(self, record: FileRecord) -> None:
        """Stage `record` and a reference to its blob, locking the blob's row until the end:
        a collection of the same content waits instead of deleting bytes this upload uses."""
        ...

    async def forget_blob(self, sha256: Sha256) -> bool:
        """Stage the removal of the blob's row if no record references it (locking it until the
        end, so an upload of the same content waits); whether it was unreferenced."""
        ...

    async def commit(self) -> None: ...


class FileRepository(Protocol):
    """File records and the reference counts that keep their blobs alive."""

    def unit_of_work(self) -> FileUnitOfWork:
        """A transaction for what commits with the bytes (adding a record, collecting a blob)."""
        ...

    async def get(self, file_id: FileId) -> FileRecord | None: ...

    async def remove(self, file_id: FileId) -> FileRecord | None:
        """Delete the record and drop its blob reference; the removed record, or None."""
        ...

    async def expect_blob(self, sha256: Sha256, *, at: datetime) -> None:
        """Make sure the blob has a row (unreferenced if new), committed at once, before its
        bytes are published: bytes whose record never committed are then found and collected."""
        ...

    async def unreferenced_blobs(self) -> list[Sha256]:
        """Blobs whose last reference is gone, or never came (a crash or a failed commit after
        the bytes were published), but whose bytes may remain."""
        ...

    async def list(self, query: ListQuery) -> Page[FileRecord]: ...

    async def set_thumbnail_status(self, file_id: FileId, status: ThumbnailStatus) -> None: ...

    async def referenced_blobs(self, *, after: Sha256 | None, limit: int) -> tuple[Sha256, ...]:
        """Blobs some record uses, in hash order after `after` (for the scrub)."""
        ...

    async def trash(self, file_id: FileId, *, at: datetime) -> FileRecord | None:
        """Move a live record to the trash; the record as it is now, or None."""
        ...

    async def restore(self, file_id: FileId) -> FileRecord | None:
        """Take a record out of the trash; the record, or None if it was not there."""
        ...

    async def due_for_removal(
        self, *, now: datetime, trashed_before: datetime, limit: int
    ) -> tuple[FileId, ...]:
        """Files expired by `now` or trashed before `trashed_before`, at most `limit`."""
        ...

    async def ping(self) -> None:
        """Raise DependencyUnavailable unless the store answers."""
        ...


class BlobReader(Protocol):
    """An open blob: stays readable until closed, even if the blob is deleted meanwhile."""

    size: int
    # A local file holding exactly these bytes, for servers that send files themselves (zero
    # copy); None when the store has none. Unlike `chunks`, it is gone once the blob is deleted.
    path: str | None

    def chunks(self, start: int, length: int) -> AsyncIterator[bytes]: ...

    async def close(self) -> None: ...


class StagedBlob(Protocol):
    """Bytes durably written to a temporary place, not yet visible under their hash."""

    size: int

    async def publish(self, sha256: Sha256) -> None:
        """Make the bytes the blob `sha256` (atomic; replaces an identical existing blob)."""
        ...

    async def discard(self) -> None: ...


class BlobStore(Protocol):
    """Content-addressed bytes."""

    async def stage(self, chunks: AsyncIterator[bytes]) -> StagedBlob:
        """Write every chunk to a temporary blob and make it durable; nothing is left on error."""
        ...

    async def open(self, sha256: Sha256) -> BlobReader | None: ...

    async def delete(self, sha256: Sha256) -> None: ...

    async def exists(self, sha256: Sha256) -> bool: ...

    async def sweep(self, *, older_than_seconds: float) -> int:
        """Remove temporary leftovers older than that; how many were removed."""
        ...

    async def check_writable(self) -> None:
        """Raise DependencyUnavailable unless a blob could be written now."""
        ...

    async def free_bytes(self) -> int | None:
        """Room left for blobs, when the store can tell."""
        ...

    async def download_url(
        self, sha256: Sha256, *, content_type: str, content_disposition: str
    ) -> str | None:
        """A short-lived URL a client may fetch the whole blob from itself, answered with these
        headers; None when the server must send the bytes (the store cannot, or is told not to)."""
        ...

    async def aclose(self) -> None:
        """Close what the store holds open (an S3 client's connections), at shutdown."""
        ...


class PartStore(Protocol):
    """The bytes of unfinished resumable uploads, where every replica reaches them (the blobs'
    volume or bucket), as segments: each written once, whole and durable, under a key of its
    own writer, so two writers never touch the same bytes. Which segments count is the
    ResumableRepository's to say; a segment it does not list is a leftover.
    """

    # The longest segment `write` takes: the service cuts a request's body at this many bytes,
    # committing each segment as it is stored (what a dropped connection keeps).
    segment_bytes: int

    async def write(self, upload: UploadId, key: str, chunks: AsyncIterator[bytes]) -> int:
        """Store the chunks (at most `segment_bytes`) as segment `key` of `upload`, durably;
        its size. On any error, nothing is left and the error is re-raised unchanged."""
        ...

    def read(self, upload: UploadId, segments: Sequence[Segment]) -> AsyncIterator[bytes]:
        """The segments' bytes, in the order given; DependencyUnavailable if one is missing."""
        ...

    async def delete(self, upload: UploadId, keys: Sequence[str]) -> None:
        """Remove these segments (missing ones are fine)."""
        ...

    async def remove(self, upload: UploadId) -> None:
        """Remove every segment of the upload (none is fine)."""
        ...

    async def stale(self, *, older_than_seconds: float) -> list[UploadId]:
        """Uploads that have segments, none written for that long (leftovers to check)."""
        ...


class Lock(enum.StrEnum):
    """What asking for a resumable upload's write lock gave."""

    ACQUIRED = "acquired"
    HELD = "held"  # another request is writing to it now (maybe on another replica)
    MOVED = "moved"  # its offset is not the one the request starts at
    GONE = "gone"  # no such upload, or it is complete


class ResumableRepository(Protocol):
    """Resumable uploads' state and write locks, shared by every replica (the database).

    A lock is a lease: `token` holds it until `until`, renewed while its request runs; a
    process that dies holding one loses it when it lapses. Every change to an upload's bytes is
    conditional on holding the lock, so a writer whose lease lapsed cannot commit anything.
    """

    async def add(self, upload: ResumableUpload) -> None: ...

    async def get(self, upload_id: UploadId) -> ResumableUpload | None: ...

    async def count_open(self, owner: str | None, *, now: datetime) -> int:
        """The owner's uploads neither complete nor past their deadline at `now`."""
        ...

    async def lock(
        self, upload_id: UploadId, *, token: str, offset: int, now: datetime, until: datetime
    ) -> Lock:
        """Take the write lock if the upload is at `offset` and nobody holds a live lease."""
        ...

    async def renew(self, upload_id: UploadId, *, token: str, until: datetime) -> bool:
        """Extend the lease; False when `token` no longer holds it."""
        ...

    async def unlock(self, upload_id: UploadId, *, token: str) -> None: ...

    async def append(self, upload_id: UploadId, *, token: str, segments: Sequence[Segment]) -> bool:
        """Commit segments that continue the upload from its offset (the first starts there),
        moving the offset past them; False, committing nothing, without the lock."""
        ...

    async def declare_length(
        self, upload_id: UploadId, *, token: str, length: int, reservation: Reservation | None
    ) -> bool:
        """Set a deferred upload's length, and the quota room held for it; False without the
        lock."""
        ...

    async def segments(self, upload_id: UploadId) -> list[Segment]:
        """The committed segments, in order."""
        ...

    async def complete(
        self, upload_id: UploadId, *, token: str, segments: Sequence[Segment], file_id: FileId
    ) -> bool:
        """Commit the last segments and the file the upload became, and forget its segments
        and room; False without the lock."""
        ...

    async def remove(self, upload_id: UploadId) -> ResumableUpload | None:
        """Forget the upload and its segments' rows; what it was, or None."""
        ...

    async def expired(self, *, now: datetime, limit: int) -> list[ResumableUpload]:
        """Uploads whose deadline passed by `now`, at most `limit`."""
        ...


@dataclass(frozen=True, slots=True)
class CacheStats:
    """A cache's lookups since `since`, counted by every process that shares it."""

    backend: str
    shared: bool  # False when each process has a cache (and counts) of its own
    hits: int
    misses: int
    entries: int  # keys held now, expired ones excluded
    since: datetime | None  # the first counted lookup

    @property
    def ratio(self) -> float | None:
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else None


@dataclass(frozen=True, slots=True)
class Cached:
    """What a cache lookup found: a copy, or the fence a fill of this key must present.

    `fence` is None when the value may not be filled in (the key was just invalidated, or the
    cache is unreachable): the caller reads the source of truth and keeps the answer to itself.
    """

    value: bytes | None
    fence: str | None = None


class Cache(Protocol):
    """Exact copies of values whose source of truth is elsewhere (the database).

    A copy that may have missed an invalidation is never served: `invalidate` returns once no
    process can read the old copy any more (waiting out an outage if it must), and `fill` stores
    a value only if nothing invalidated the key (and the cache lost nothing) since the `lookup`
    that gave its fence. Misses and outages are never errors: they send readers to the database.
    """

    async def lookup(self, key: str) -> Cached:
        """The copy of `key` (counted as a hit or a miss), or a fence to fill it with."""
        ...

    async def fill(self, key: str, value: bytes, *, fence: str) -> None:
        """Store `value`, read from the source after the lookup that gave `fence`, if still valid."""
        ...

    async def invalidate(self, key: str) -> None:
        """No reader, in any process, gets the current copy of `key` once this returns."""
        ...

    async def ping(self) -> None:
        """Raise DependencyUnavailable unless the cache answers."""
        ...

    async def stats(self) -> CacheStats:
        """Hits, misses and entries; raise DependencyUnavailable if they cannot be read."""
        ...


class Sniffer(Protocol):
    """Tells a content type from the first bytes of a file, never from what a client claims."""

    async def sniff(self, head: bytes) -> ContentType: ...


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware (UTC)."""
        ...


class KeyRepository(Protocol):
    """Stored API keys (never their secrets)."""

    async def add(self, key: ApiKey) -> None: ...

    async def get(self, key_id: str) -> ApiKey | None: ...

    async def list(self, *, limit: int, after: str | None = None) -> list[ApiKey]:
        """Keys ordered by id, after the id `after`."""
        ...

    async def revoke(self, key_id: str, *, at: datetime) -> ApiKey | None:
        """Mark the key revoked (idempotent); the key as it is now, or None if unknown."""
        ...

    async def touch(self, key_id: str, *, at: datetime) -> None:
        """Record that the key was used at `at`."""
        ...

    async def count(self) -> int: ...


class IpRuleRepository(Protocol):
    async def add(self, rule: IpRule) -> None: ...

    async def list(self) -> list[IpRule]: ...

    async def remove(self, rule_id: str) -> bool: ...


class AuditLog(Protocol):
    """An append-only log of every state change, denial and download."""

    async def record(self, entry: AuditEntry) -> None: ...

    async def query(self, query: AuditQuery) -> list[AuditEntry]:
        """Entries newest first, matching every filter, at most `query.limit`."""
        ...

    async def flush(self) -> None:
        """Make every entry recorded so far visible to queries (a no-op if written at once)."""
        ...

    async def aclose(self) -> None:
        """Write what is queued and stop (at shutdown); later entries are refused."""
        ...


@dataclass(frozen=True, slots=True)
class StorageTotals:
    files: int
    logical_bytes: int  # what the files add up to
    blobs: int
    stored_bytes: int  # what the deduplicated blobs take

    @property
    def dedup_ratio(self) -> float:
        return self.logical_bytes / self.stored_bytes if self.stored_bytes else 1.0


class UsageRepository(Protocol):
    async def stored_by(self, owner: str) -> tuple[int, int]:
        """(files, logical bytes) that `owner` stores now."""
        ...

    async def reserve(
        self, owner: str, quota: Quota, *, size: int | None, now: datetime, until: datetime
    ) -> Reservation:
        """Hold room for one upload of `size` bytes (None: unknown, so all the room left) in
        `owner`'s quota, counting what is stored and every live reservation, in one atomic step:
        concurrent uploads never pass the quota together. QuotaExceeded when it does not fit."""
        ...

    async def release(self, reservation: Reservation) -> None:
        """Give the room back (the upload ended: stored, or failed)."""
        ...

    async def drop_expired_reservations(self, *, now: datetime) -> int:
        """Forget reservations whose upload's process died; how many."""
        ...

    async def totals(self) -> StorageTotals:
        """Everything stored, counted once per file and once per distinct content."""
        ...


class RateLimiter(Protocol):
    async def hit(self, key: str, *, rule: RateRule) -> RateDecision:
        """Count one request for `key` against `rule`."""
        ...


class ScanVerdict(enum.StrEnum):
    CLEAN = "clean"
    INFECTED = "infected"
    ERROR = "error"  # never clean: the scan could not vouch for the bytes


@dataclass(frozen=True, slots=True)
class ScanResult:
    verdict: ScanVerdict
    signature: str | None = None
    detail: str | None = None


class ScanSession(Protocol):
    """One file streamed to the scanner while it is being stored."""

    async def feed(self, chunk: bytes) -> None: ...

    async def finish(self) -> ScanResult: ...

    async def abort(self) -> None: ...


class MalwareScanner(Protocol):
    enabled: bool

    async def start(self) -> ScanSession: ...

    async def ping(self) -> None: ...


class ThumbnailRenderer(Protocol):
    """Renders thumbnails of untrusted images, safely: limits, time-outs, no crash."""

    async def render(self, source: bytes, *, longest_side: int, format: ImageFormat) -> bytes:
        """The thumbnail, or ThumbnailFailed (not an image, too many pixels, corrupt, too slow)."""
        ...


class CharsetDecoder(Protocol):
    """Turns the start of a text file, in whatever charset, into text."""

    def decode(self, data: bytes, *, complete: bool) -> tuple[str, str] | None:
        """(text, charset) — `complete` False when `data` is a prefix cut anywhere — or None
        when the bytes are not text at all."""
        ...


@dataclass(frozen=True, slots=True)
class UploadStats:
    succeeded: int
    failed: int
    errors_by_reason: dict[str, int]

    @property
    def success_rate(self) -> float | None:
        total = self.succeeded + self.failed
        return self.succeeded / total if total else None


@dataclass(frozen=True, slots=True)
class ClientUsage:
    client: str  # a key id, or an address
    actor: str | None
    uploads: int
    bytes_in: int
    downloads: int
    bytes_out: int
    errors: int


class StatsRepository(Protocol):
    """Statistics computed from the audit log: the same answer on every replica."""

    async def uploads(self, *, since: datetime) -> UploadStats: ...

    async def usage(
        self, *, since: datetime, by_address: bool, top: int
    ) -> tuple[ClientUsage, ...]:
        """The `top` clients by bytes moved, per key (or per address)."""
        ...
