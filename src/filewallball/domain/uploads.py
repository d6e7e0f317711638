"""Uploads: the request on its way in, the meter its bytes stream through (size, hash, type,
scan), and the pipeline that reserves quota, stores the bytes and commits the record."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from filewallball.domain.access import Auditor
from filewallball.domain.errors import (
    DependencyUnavailable,
    DigestMismatch,
    FileTooLarge,
    FileWallBallError,
    MalwareDetected,
)
from filewallball.domain.jobs import TaskQueue
from filewallball.domain.models import (
    ByteSize,
    ContentType,
    FileId,
    Filename,
    FileRecord,
    ScanStatus,
    Sha256,
    ThumbnailStatus,
    TypePolicy,
    Visibility,
)
from filewallball.domain.policies import ExpiryPolicy, Quota, Reservation
from filewallball.domain.ports import (
    BlobStore,
    Clock,
    FileRepository,
    MalwareScanner,
    ScanSession,
    ScanVerdict,
    Sniffer,
    UsageRepository,
)
from filewallball.domain.security import Outcome, Permission, Principal

# Enough for every format's signature and for libmagic to tell text from binary; it takes
# milliseconds on 64 KiB of text or of unknown binary, microseconds to a millisecond on 16 KiB.
SNIFF_BYTES = 16 * 1024


@dataclass
class UploadRequest:
    """An upload on its way in. Fields other than `chunks` are final once `chunks` is exhausted
    (a multipart form may carry fields after the file)."""

    filename: str
    chunks: AsyncIterator[bytes]
    visibility: Visibility = Visibility.PRIVATE
    expected_sha256: Sha256 | None = None
    declared_size: int | None = None
    expires_at: datetime | None = None
    expires_in_seconds: int | None = None
    file_id: FileId | None = None  # chosen by the caller (a resumable upload's), else new


@dataclass
class StreamMeter:
    """Counts, hashes, sniffs and scans bytes as they stream past, stopping at the limits."""

    limit: int
    quota: int | None
    sniffer: Sniffer
    policy: TypePolicy
    scan: ScanSession | None
    size: int = 0
    content_type: ContentType | None = None
    _hasher: hashlib._Hash = field(default_factory=hashlib.sha256)
    _head: bytearray = field(default_factory=bytearray)

    async def watch(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async for chunk in chunks:
            if not chunk:
                continue
            self.size += len(chunk)
            if self.size > self.limit:
                raise FileTooLarge(self.limit)
            if self.quota is not None and self.size > self.quota:
                Quota.check_size(self.size, self.quota)
            self._hasher.update(chunk)
            if self.content_type is None:
                self._head += chunk[: SNIFF_BYTES - len(self._head)]
                if len(self._head) >= SNIFF_BYTES:
                    await self._decide_type()
            if self.scan is not None:
                await self.scan.feed(chunk)
            yield chunk
        if self.content_type is None:
            await self._decide_type()

    async def _decide_type(self) -> None:
        content_type = await self.sniffer.sniff(bytes(self._head))
        self.policy.check(content_type)
        self.content_type = content_type
        self._head = bytearray()

    @property
    def sha256(self) -> Sha256:
        return Sha256.from_digest(self._hasher.digest())


THUMBNAIL_JOB = "thumbnail"  # handled in domain/thumbnails.py
_log = logging.getLogger("filewallball.files")


@dataclass(frozen=True, slots=True)
class UploadLimits:
    max_upload_bytes: int
    preview_max_bytes: int
    type_policy: TypePolicy
    scan_fail_open: bool = False
    trash_retention_seconds: int = 0  # 0: a delete is final
    expiry: ExpiryPolicy = field(default_factory=ExpiryPolicy)
    # How long an upload's quota reservation lasts if its process dies before releasing it.
    reservation_seconds: int = 3600


class Uploader:
    """One upload, from the first byte to a committed record: quota, limits, type, scan, digest."""

    def __init__(
        self,
        *,
        files: FileRepository,
        blobs: BlobStore,
        sniffer: Sniffer,
        clock: Clock,
        usage: UsageRepository,
        scanner: MalwareScanner,
        auditor: Auditor,
        limits: UploadLimits,
        jobs: TaskQueue,
    ) -> None:
        self._files = files
        self._blobs = blobs
        self._sniffer = sniffer
        self._clock = clock
        self._usage = usage
        self._scanner = scanner
        self._auditor = auditor
        self._limits = limits
        self._jobs = jobs

    async def upload(
        self,
        principal: Principal,
        request: UploadRequest,
        *,
        reservation: Reservation | None = None,
    ) -> FileRecord:
        """Stream the file to durable storage, then make it visible; all or nothing.

        With a `reservation` (a resumable upload's, held since its creation) it is used as is
        and left to the caller to release; else room is reserved and released here.
        """
        principal.require(Permission.FILES_WRITE)
        try:
            if reservation is not None:
                record = await self._store(principal, request, room=reservation.bytes)
            else:
                record = await self._upload(principal, request)
        except FileWallBallError as error:
            await self._auditor.record(
                principal,
                "file.upload",
                Outcome.FAILED,
                target=request.filename[:255],
                detail=error.code,
            )
            raise
        await self._auditor.record(
            principal, "file.upload", Outcome.SUCCESS, target=record.id, size=record.size
        )
        if record.thumbnailable:
            await self._queue_thumbnails(record)
        return record

    async def _queue_thumbnails(self, record: FileRecord) -> None:
        try:
            await self._jobs.enqueue(THUMBNAIL_JOB, key=record.id, payload={"file_id": record.id})
        except DependencyUnavailable as error:
            # The upload stands: thumbnails are rendered on demand until the queue is back.
            _log.warning(
                "thumbnail_job_not_queued", extra={"file_id": record.id, "reason": error.detail}
            )

    async def _upload(self, principal: Principal, request: UploadRequest) -> FileRecord:
        limit = self._limits.max_upload_bytes
        if request.declared_size is not None and request.declared_size > limit:
            raise FileTooLarge(limit)
        reservation = await self.reserve(principal, request.declared_size)
        try:
            return await self._store(
                principal, request, room=None if reservation is None else reservation.bytes
            )
        finally:
            if reservation is not None:
                await self.release(reservation)

    async def made(self, file_id: FileId) -> FileRecord | None:
        """The file of that id, if an upload already made it (a retried completion)."""
        return await self._files.get(file_id)

    async def check_type(self, head: bytes) -> None:
        """TypeNotAllowed unless the file these first bytes (SNIFF_BYTES of them, or the whole
        file) begin is of an allowed type: what the upload itself will decide, said early."""
        self._limits.type_policy.check(await self._sniffer.sniff(head[:SNIFF_BYTES]))

    async def reserve(
        self, principal: Principal, size: int | None, *, until: datetime | None = None
    ) -> Reservation | None:
        """Room in the owner's quota, held before any byte is accepted (None: no quota), until
        released or `until` (by default FWB's reservation lifetime from now)."""
        quota = Quota(files=principal.quota_files, bytes=principal.quota_bytes)
        if principal.owner is None or not quota.limited:
            return None
        now = self._clock.now()
        until = until or now + timedelta(seconds=self._limits.reservation_seconds)
        return await self._usage.reserve(principal.owner, quota, size=size, now=now, until=until)

    async def room(self, principal: Principal) -> int | None:
        """Bytes the owner may still add now (None: no byte quota); QuotaExceeded when none."""
        reservation = await self.reserve(principal, None)
        if reservation is None:
            return None
        await self.release(reservation)
        return reservation.bytes

    async def release(self, reservation: Reservation) -> None:
        try:
            await self._usage.release(reservation)
        except DependencyUnavailable as error:
            # It stops counting when it expires; until then the owner has less room, not more.
            _log.warning(
                "quota_reservation_kept", extra={"owner": reservation.owner, "reason": error.detail}
            )

    async def _store(
        self, principal: Principal, request: UploadRequest, *, room: int | None
    ) -> FileRecord:
        limit = self._limits.max_upload_bytes
        scan, scan_status = await self._start_scan()
        meter = StreamMeter(limit, room, self._sniffer, self._limits.type_policy, scan)
        try:
            staged = await self._blobs.stage(meter.watch(request.chunks))
        except BaseException:
            if scan is not None:
                await scan.abort()
            raise
        try:
            if scan is not None:
                scan_status = await self._verdict(principal, scan, request.filename)
            sha256 = meter.sha256
            if request.expected_sha256 is not None and request.expected_sha256 != sha256:
                raise DigestMismatch(
                    f"the body's SHA-256 is {sha256}, not the {request.expected_sha256} declared"
                )
            # Read after the stream: a form may carry its expiry fields after the file.
            expires_at = self._limits.expiry.expires_at(
                self._clock.now(), at=request.expires_at, in_seconds=request.expires_in_seconds
            )
            content_type = meter.content_type or ContentType.OCTET_STREAM
            record = FileRecord(
                id=request.file_id or FileId.new(),
                filename=Filename.sanitise(request.filename),
                size=ByteSize(meter.size),
                content_type=content_type,
                thumbnail_status=(
                    ThumbnailStatus.PENDING
                    if content_type.is_thumbnailable
                    else ThumbnailStatus.NOT_APPLICABLE
                ),
                sha256=sha256,
                created_at=self._clock.now(),
                visibility=request.visibility,
                owner=principal.owner,
                scan_status=scan_status,
                expires_at=expires_at,
            )
            # Committed before the bytes are renamed into place: if this process dies, or the
            # commit below fails, after the rename, the blob's row (unreferenced) is what lets
            # recovery find the bytes and remove them. Without it they would stay forever.
            await self._files.expect_blob(sha256, at=record.created_at)
            async with self._files.unit_of_work() as work:
                await work.add(record)
                await staged.publish(sha256)
                await work.commit()
        finally:
            await staged.discard()
        return record

    async def _start_scan(self) -> tuple[ScanSession | None, ScanStatus]:
        if not self._scanner.enabled:
            return None, ScanStatus.SKIPPED
        try:
            return await self._scanner.start(), ScanStatus.CLEAN
        except DependencyUnavailable:
            if self._limits.scan_fail_open:
                return None, ScanStatus.UNSCANNED
            raise

    async def _verdict(self, principal: Principal, scan: ScanSession, filename: str) -> ScanStatus:
        result = await scan.finish()
        if result.verdict is ScanVerdict.INFECTED:
            signature = result.signature or "unknown"
            await self._auditor.record(
                principal,
                "malware.detected",
                Outcome.DENIED,
                target=filename[:255],
                detail=signature,
            )
            raise MalwareDetected(signature)
        if result.verdict is ScanVerdict.ERROR:
            # An errored or over-limit scan never vouches for the bytes.
            if self._limits.scan_fail_open:
                return ScanStatus.UNSCANNED
            raise DependencyUnavailable("clamd", f"the malware scan failed: {result.detail}")
        return ScanStatus.CLEAN
