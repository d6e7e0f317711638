"""Resumable uploads (tus): bytes that arrive over many requests, maybe on many replicas, and
become a file through the same pipeline as any other upload once the last byte is in.

Until then they are segments in the PartStore, listed by the ResumableRepository, and count
against nothing but the quota room held for the upload since its length became known. Every
write holds the upload's lease (one writer at a time, across replicas) and commits each
segment as it is stored, so a dropped connection keeps what arrived, and a killed process
loses at most the segment it was writing. With an Upload-Checksum, nothing of the request is
kept unless every byte matches it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from filewallball.domain.access import Auditor
from filewallball.domain.errors import (
    ChecksumMismatch,
    ClientDisconnected,
    DependencyUnavailable,
    FileTooLarge,
    FileWallBallError,
    InvalidRequest,
    LengthExceeded,
    OffsetMismatch,
    QuotaExceeded,
    StorageFull,
    TooManyOpenUploads,
    TypeNotAllowed,
    UploadExpired,
    UploadLocked,
    UploadNotFound,
)
from filewallball.domain.models import (
    FileId,
    Filename,
    ResumableUpload,
    Segment,
    UploadId,
    Visibility,
)
from filewallball.domain.policies import Reservation
from filewallball.domain.ports import Clock, Lock, PartStore, ResumableRepository
from filewallball.domain.security import Outcome, Permission, Principal
from filewallball.domain.uploads import SNIFF_BYTES, Uploader, UploadLimits, UploadRequest

_log = logging.getLogger("filewallball.resumable")

CHECKSUM_ALGORITHMS: dict[str, Callable[[], hashlib._Hash]] = {
    "sha256": hashlib.sha256,
    "sha1": hashlib.sha1,
    "md5": hashlib.md5,
}


@dataclass(frozen=True, slots=True)
class Checksum:
    """What a request says its body hashes to (tus Upload-Checksum)."""

    algorithm: str
    digest: bytes

    def __post_init__(self) -> None:
        if self.algorithm not in CHECKSUM_ALGORITHMS:
            raise InvalidRequest(
                f"checksum algorithm {self.algorithm!r} is not supported"
                f" (use {', '.join(CHECKSUM_ALGORITHMS)})",
                code="unsupported_checksum",
            )


# How long HEAD waits for a request still writing to the upload to finish.
SETTLE_SECONDS = 3.0
# Each request (and each dropped connection) adds at least one segment: a client sending a byte
# at a time must not make an upload of millions of rows and objects.
MAX_SEGMENTS = 10_000


@dataclass(frozen=True, slots=True)
class ResumableLimits:
    expires_in_seconds: int = 24 * 3600  # FWB_TUS_EXPIRES_IN: creation to deadline
    max_open_per_owner: int = 20  # FWB_TUS_MAX_OPEN_UPLOADS
    lock_seconds: float = 10.0  # a write lease; renewed every third of it while writing


@dataclass(frozen=True, slots=True)
class Creation:
    """What a client asks for when it creates an upload."""

    length: int | None  # None: declared later (creation-defer-length)
    filename: str
    visibility: Visibility = Visibility.PRIVATE
    expires_in_seconds: int | None = None  # the file's lifetime once complete
    metadata: str = ""  # Upload-Metadata as sent
    partial: bool = False  # a part of a later concatenation (tus Upload-Concat: partial)


@dataclass(frozen=True, slots=True)
class Appended:
    """A write's outcome: the upload as it is now, and the bytes this write committed."""

    upload: ResumableUpload
    received: int


class _Body:
    """A request body handed out a segment at a time, counted and hashed as it passes."""

    def __init__(
        self,
        chunks: AsyncIterator[bytes],
        *,
        room: int,
        too_long: Callable[[], FileWallBallError],
        checksum: Checksum | None,
    ) -> None:
        self._chunks = chunks
        self._room = room  # bytes this request may still carry
        self._too_long = too_long
        self._hasher = CHECKSUM_ALGORITHMS[checksum.algorithm]() if checksum else None
        self._pending = b""
        self.ended = False
        self.disconnected = False
        self._keep_partial = checksum is None

    async def _next(self) -> bytes | None:
        try:
            chunk = await anext(self._chunks, None)
        except ClientDisconnected:
            if not self._keep_partial:
                raise
            # What arrived before the connection dropped is kept: the client resumes after it.
            self.disconnected = True
            chunk = None
        if chunk is None:
            self.ended = True
        return chunk

    async def more(self) -> bool:
        """Whether another byte is coming (reads ahead one chunk)."""
        while not self._pending and not self.ended:
            self._pending = await self._next() or b""
        return bool(self._pending)

    async def segment(self, size: int) -> AsyncIterator[bytes]:
        """Up to `size` more bytes of the body."""
        left = size
        while left > 0:
            chunk, self._pending = self._pending, b""
            if not chunk and (self.ended or not (chunk := await self._next() or b"")):
                return
            if len(chunk) > left:
                chunk, self._pending = chunk[:left], chunk[left:]
            if len(chunk) > self._room:
                raise self._too_long()
            self._room -= len(chunk)
            left -= len(chunk)
            if self._hasher is not None:
                self._hasher.update(chunk)
            yield chunk

    def digest(self) -> bytes | None:
        return None if self._hasher is None else self._hasher.digest()


class ResumableService:
    """Create, continue, inspect and terminate resumable uploads, as their owner may."""

    def __init__(
        self,
        *,
        uploads: ResumableRepository,
        parts: PartStore,
        uploader: Uploader,
        clock: Clock,
        auditor: Auditor,
        limits: ResumableLimits,
        upload_limits: UploadLimits,
    ) -> None:
        self._uploads = uploads
        self._parts = parts
        self._uploader = uploader
        self._clock = clock
        self._auditor = auditor
        self._limits = limits
        self._upload_limits = upload_limits

    @property
    def max_size(self) -> int:
        return self._upload_limits.max_upload_bytes

    async def create(self, principal: Principal, creation: Creation) -> ResumableUpload:
        """A new upload, its quota room held when its length is known; nothing stored yet."""
        principal.require(Permission.FILES_WRITE)
        if creation.length is not None:
            self._check_length(creation.length)
        now = self._clock.now()
        # The file's expiry is computed when it completes; refuse a bad one now, not then.
        self._upload_limits.expiry.expires_at(now, at=None, in_seconds=creation.expires_in_seconds)
        limit = self._limits.max_open_per_owner
        if await self._uploads.count_open(principal.owner, now=now) >= limit:
            raise TooManyOpenUploads(
                f"{limit} uploads are unfinished: complete or terminate one first"
            )
        expires_at = now + timedelta(seconds=self._limits.expires_in_seconds)
        reservation = None
        if creation.length is not None:
            reservation = await self._uploader.reserve(principal, creation.length, until=expires_at)
        upload = ResumableUpload(
            id=UploadId.new(),
            owner=principal.owner,
            length=creation.length,
            offset=0,
            filename=Filename.sanitise(creation.filename),
            visibility=creation.visibility,
            expires_in_seconds=creation.expires_in_seconds,
            metadata=creation.metadata,
            created_at=now,
            expires_at=expires_at,
            reservation_id=None if reservation is None else reservation.id,
            reservation_bytes=None if reservation is None else reservation.bytes,
            concat="partial" if creation.partial else None,
        )
        try:
            await self._uploads.add(upload)
        except BaseException:
            if reservation is not None:
                await self._uploader.release(reservation)
            raise
        await self._auditor.record(
            principal, "upload.create", Outcome.SUCCESS, target=upload.id, size=creation.length
        )
        return upload

    async def get(self, principal: Principal, raw_id: str) -> ResumableUpload:
        """The upload; another owner's does not exist, and an unfinished one past its deadline
        is gone (UploadExpired)."""
        upload = await self._find(principal, raw_id)
        if not upload.complete and upload.expires_at <= self._clock.now():
            raise UploadExpired(f"upload {upload.id} passed its deadline unfinished")
        return upload

    async def settled(self, principal: Principal, raw_id: str) -> ResumableUpload:
        """The upload once no request is writing to it (waiting a few seconds at most): a client
        that lost its connection asks where to resume while its old request still finishes."""
        upload = await self.get(principal, raw_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(self._limits.lock_seconds, SETTLE_SECONDS)
        while upload.locked_until is not None and loop.time() < deadline:
            if upload.locked_until <= self._clock.now():
                break  # a lapsed lease: its writer is gone
            await asyncio.sleep(0.05)
            upload = await self.get(principal, raw_id)
        return upload

    async def _find(self, principal: Principal, raw_id: str) -> ResumableUpload:
        principal.require(Permission.FILES_WRITE)
        upload_id = UploadId.parse(raw_id)
        upload = None if upload_id is None else await self._uploads.get(upload_id)
        if upload is None or upload.owner != principal.owner:
            raise UploadNotFound(f"no upload {raw_id!r}")
        return upload

    async def append(
        self,
        principal: Principal,
        raw_id: str,
        chunks: AsyncIterator[bytes],
        *,
        offset: int,
        length: int | None = None,
        checksum: Checksum | None = None,
        size: int | None = None,
    ) -> Appended:
        """Store the bytes at `offset` (where the upload is), declaring its length if it was
        deferred; the last byte makes the file (whose id the upload then carries).

        The completing write answers the file's problem (413, 415, 422) and removes the upload;
        an outage then (503) keeps it, less the request's bytes, for the client to send again.
        """
        upload = await self.get(principal, raw_id)
        if upload.complete:
            if (
                offset == upload.offset
                and not await _Body(
                    chunks, room=0, too_long=self._past_length(upload), checksum=None
                ).more()
            ):
                return Appended(upload, 0)
            raise OffsetMismatch(f"upload {upload.id} is complete")
        if offset != upload.offset:
            raise OffsetMismatch(f"upload {upload.id} is at offset {upload.offset}, not {offset}")
        if length is not None and upload.length is not None and length != upload.length:
            raise InvalidRequest(
                f"the upload's length is {upload.length}; it cannot change",
                code="invalid_upload_length",
            )
        # A body that says it is too long is refused before any of it is stored.
        limit = length if length is not None else upload.length
        if size is not None and limit is not None and offset + size > limit:
            raise LengthExceeded(f"the bytes sent pass the upload's length of {limit} bytes")
        token = secrets.token_hex(16)
        now = self._clock.now()
        lease = timedelta(seconds=self._limits.lock_seconds)
        held = await self._uploads.lock(
            upload.id, token=token, offset=offset, now=now, until=now + lease
        )
        if held is Lock.HELD:
            raise UploadLocked(f"upload {upload.id} is being written by another request")
        if held is Lock.MOVED:
            raise OffsetMismatch(f"upload {upload.id} is no longer at offset {offset}")
        if held is Lock.GONE:
            if await self._uploads.get(upload.id) is not None:  # completed meanwhile
                raise OffsetMismatch(f"upload {upload.id} is complete")
            raise UploadNotFound(f"no upload {raw_id!r}")
        try:
            async with self._leased(upload.id, token):
                # As it is now, under the lock: a request just before may have declared its
                # length (or filled it) since it was read above.
                upload = await self._locked_state(upload, raw_id)
                if length is not None and upload.length is not None and length != upload.length:
                    raise InvalidRequest(
                        f"the upload's length is {upload.length}; it cannot change",
                        code="invalid_upload_length",
                    )
                if length is not None and upload.length is None:
                    upload = await self._declare(principal, upload, token, length)
                return await self._receive(principal, upload, token, chunks, checksum)
        finally:
            with suppress(DependencyUnavailable):
                await self._uploads.unlock(upload.id, token=token)

    async def _locked_state(self, upload: ResumableUpload, raw_id: str) -> ResumableUpload:
        current = await self._uploads.get(upload.id)
        if current is None:
            raise UploadNotFound(f"no upload {raw_id!r}")
        if len(await self._uploads.segments(upload.id)) >= MAX_SEGMENTS:
            raise InvalidRequest(
                f"upload {upload.id} has {MAX_SEGMENTS} segments, the most one may have:"
                " send larger requests (or terminate it and start again)",
                code="too_many_segments",
            )
        return current

    def _check_length(self, length: int) -> None:
        if length > self.max_size:
            raise FileTooLarge(self.max_size)

    def _past_length(self, upload: ResumableUpload) -> Callable[[], FileWallBallError]:
        return lambda: LengthExceeded(
            f"the bytes sent pass the upload's length of {upload.length} bytes"
        )

    async def _declare(
        self, principal: Principal, upload: ResumableUpload, token: str, length: int
    ) -> ResumableUpload:
        if length < upload.offset:
            raise InvalidRequest(
                f"Upload-Length {length} is less than the {upload.offset} bytes stored",
                code="invalid_upload_length",
            )
        try:
            self._check_length(length)
        except FileTooLarge:
            await self._forget(upload)  # it can never become a file
            raise
        reservation = await self._uploader.reserve(principal, length, until=upload.expires_at)
        if not await self._uploads.declare_length(
            upload.id, token=token, length=length, reservation=reservation
        ):
            if reservation is not None:
                await self._uploader.release(reservation)
            raise UploadLocked(f"upload {upload.id} was taken over by another request")
        return replace(
            upload,
            length=length,
            reservation_id=None if reservation is None else reservation.id,
            reservation_bytes=None if reservation is None else reservation.bytes,
        )

    async def _receive(
        self,
        principal: Principal,
        upload: ResumableUpload,
        token: str,
        chunks: AsyncIterator[bytes],
        checksum: Checksum | None,
    ) -> Appended:
        if upload.length is not None:
            body = _Body(
                chunks,
                room=upload.length - upload.offset,
                too_long=self._past_length(upload),
                checksum=checksum,
            )
        else:
            # No room is held for a length not yet known: the owner's room left now bounds
            # what this request may add (the file's own upload checks the quota again).
            quota_room = await self._uploader.room(principal)
            room = self.max_size - upload.offset
            if quota_room is not None and quota_room - upload.offset < room:
                room = quota_room - upload.offset
                if room <= 0:
                    raise QuotaExceeded("the upload's bytes fill the owner's quota")
                body = _Body(
                    chunks,
                    room=room,
                    too_long=lambda: QuotaExceeded("the upload passes the owner's quota"),
                    checksum=checksum,
                )
            else:
                body = _Body(
                    chunks,
                    room=room,
                    too_long=lambda: FileTooLarge(self.max_size),
                    checksum=checksum,
                )
        position = upload.offset
        pending: list[Segment] = []  # stored, not yet committed
        writer = token[:12]
        try:
            while await body.more():
                key = Segment.key_for(position, writer)
                size = await self._parts.write(
                    upload.id, key, body.segment(self._parts.segment_bytes)
                )
                segment = Segment(position, size, key)
                pending.append(segment)
                position = segment.end
                # A part of a concatenation is complete with its last byte; a whole upload's
                # last bytes are committed with the file they make.
                final = upload.length == position and not upload.partial
                if checksum is None and not final:
                    await self._commit(upload, token, pending)
                    pending = []
                    await self._check_type_once(upload, before=segment.start, now=position)
            if checksum is not None and body.digest() != checksum.digest:
                raise ChecksumMismatch(
                    f"the bytes do not match the {checksum.algorithm} of Upload-Checksum"
                )
            if upload.length == position and not upload.partial:
                return await self._finish(principal, upload, token, pending)
            if pending:
                start = pending[0].start
                await self._commit(upload, token, pending)
                pending = []
                await self._check_type_once(upload, before=start, now=position)
        except (FileTooLarge, TypeNotAllowed):
            # Past the limit (deferred), or of a refused type: it can never become a file.
            await self._discard(upload, pending)
            await self._forget(upload)
            raise
        except BaseException:
            await self._discard(upload, pending)
            raise
        return Appended(replace(upload, offset=position), position - upload.offset)

    async def _check_type_once(self, upload: ResumableUpload, *, before: int, now: int) -> None:
        """Once the first SNIFF_BYTES are stored, tell a refused type at once (415, and the
        upload is removed by the caller) rather than after the last byte of a large file."""
        if upload.partial or not before < SNIFF_BYTES <= now:
            return  # a part's first bytes may lie anywhere in the file
        first: list[Segment] = []  # the segments' first SNIFF_BYTES, and no more
        for segment in await self._uploads.segments(upload.id):
            wanted = SNIFF_BYTES - sum(s.size for s in first)
            if wanted <= 0:
                break
            first.append(replace(segment, size=min(segment.size, wanted)))
        head = b"".join([chunk async for chunk in self._parts.read(upload.id, first)])
        await self._uploader.check_type(head)

    async def _commit(self, upload: ResumableUpload, token: str, segments: list[Segment]) -> None:
        """List the segments; if the database fails, they may be listed all the same (a commit
        whose answer was lost), so they are kept: the upload's removal deletes them if not."""
        try:
            committed = await self._uploads.append(upload.id, token=token, segments=segments)
        except DependencyUnavailable:
            segments.clear()
            raise
        if not committed:
            raise UploadLocked(f"upload {upload.id} was taken over by another request")

    async def _discard(self, upload: ResumableUpload, segments: list[Segment]) -> None:
        if segments:
            with suppress(DependencyUnavailable):
                await self._parts.delete(upload.id, [segment.key for segment in segments])

    async def _finish(
        self, principal: Principal, upload: ResumableUpload, token: str, last: list[Segment]
    ) -> Appended:
        """Stream every byte through the upload pipeline, as POST /upload's are."""
        assert upload.length is not None
        file_id = FileId.of_upload(upload.id)
        reservation = _reservation(upload)
        # A completion retried after the database failed below: the file exists already.
        record = await self._uploader.made(file_id)
        if record is None:
            segments = [*await self._uploads.segments(upload.id), *last]
            request = UploadRequest(
                filename=upload.filename,
                chunks=self._parts.read(upload.id, segments),
                visibility=upload.visibility,
                expires_in_seconds=upload.expires_in_seconds,
                declared_size=upload.length,
                file_id=file_id,
            )
            try:
                record = await self._uploader.upload(principal, request, reservation=reservation)
            except (DependencyUnavailable, StorageFull):
                raise  # kept, without this request's last bytes: `_receive` discards them
            except FileWallBallError:
                await self._forget(upload)
                raise
        try:
            completed = await self._uploads.complete(
                upload.id, token=token, segments=last, file_id=record.id
            )
        except DependencyUnavailable:
            last.clear()  # maybe listed (an answer lost): the retry finds the file, or the row
            raise
        if not completed:
            # Terminated meanwhile: the file stands (its record committed), the upload does not.
            _log.warning("upload_completed_after_termination", extra={"upload": upload.id})
        with suppress(DependencyUnavailable):
            await self._parts.remove(upload.id)  # else the maintenance job's sweep does
        if reservation is not None:
            await self._uploader.release(reservation)
        await self._auditor.record(
            principal,
            "upload.complete",
            Outcome.SUCCESS,
            target=upload.id,
            detail=record.id,
            size=upload.length,
        )
        done = replace(upload, offset=upload.length, file_id=record.id)
        return Appended(done, upload.length - upload.offset)

    async def concatenate(
        self, principal: Principal, creation: Creation, raw_ids: Sequence[str]
    ) -> ResumableUpload:
        """The file the complete partial uploads make, in this order (tus concatenation): its
        bytes go through the upload pipeline as one stream; the parts are then forgotten."""
        principal.require(Permission.FILES_WRITE)
        if not raw_ids:
            raise InvalidRequest(
                "Upload-Concat: final lists no partial uploads", code="invalid_concat"
            )
        parts = [await self.get(principal, raw_id) for raw_id in raw_ids]
        if len({part.id for part in parts}) != len(parts):
            raise InvalidRequest("a partial upload is listed twice", code="invalid_concat")
        for part in parts:
            if not part.partial or part.length is None or part.offset != part.length:
                raise InvalidRequest(
                    f"upload {part.id} is not a complete partial upload", code="invalid_concat"
                )
        total = sum(part.offset for part in parts)
        self._check_length(total)
        now = self._clock.now()
        self._upload_limits.expiry.expires_at(now, at=None, in_seconds=creation.expires_in_seconds)
        token = secrets.token_hex(16)
        until = now + timedelta(seconds=self._limits.lock_seconds)
        # The parts stay locked (their leases renewed) until they are forgotten: a second
        # concatenation of one of them, or a write to it, waits (423) meanwhile.
        async with AsyncExitStack() as held:
            taken: list[ResumableUpload] = []

            async def unlock_taken() -> None:
                for part in taken:
                    with suppress(DependencyUnavailable):
                        await self._uploads.unlock(part.id, token=token)

            held.push_async_callback(unlock_taken)
            for part in parts:
                lock = await self._uploads.lock(
                    part.id, token=token, offset=part.offset, now=now, until=until
                )
                if lock is not Lock.ACQUIRED:
                    raise UploadLocked(f"upload {part.id} is being used by another request")
                taken.append(part)
                await held.enter_async_context(self._leased(part.id, token))
            # The first part's id names the file: a retried concatenation finds it made.
            file_id = FileId.of_upload(parts[0].id)
            record = await self._uploader.made(file_id)
            if record is None:
                segments = [(part, await self._uploads.segments(part.id)) for part in parts]
                for part in parts:  # the file reserves its own room, for all of them together
                    if (reservation := _reservation(part)) is not None:
                        await self._uploader.release(reservation)
                record = await self._uploader.upload(
                    principal,
                    UploadRequest(
                        filename=Filename.sanitise(creation.filename),
                        chunks=self._concatenated(segments),
                        visibility=creation.visibility,
                        expires_in_seconds=creation.expires_in_seconds,
                        declared_size=total,
                        file_id=file_id,
                    ),
                )
            final = self._final(principal, creation, parts, record.id, total, now)
            await self._uploads.add(final)
            for part in parts:
                await self._forget(part)
        await self._auditor.record(
            principal,
            "upload.complete",
            Outcome.SUCCESS,
            target=final.id,
            detail=record.id,
            size=total,
        )
        return final

    def _final(
        self,
        principal: Principal,
        creation: Creation,
        parts: list[ResumableUpload],
        file_id: FileId,
        total: int,
        now: datetime,
    ) -> ResumableUpload:
        return ResumableUpload(
            id=UploadId.new(),
            owner=principal.owner,
            length=total,
            offset=total,
            filename=Filename.sanitise(creation.filename),
            visibility=creation.visibility,
            expires_in_seconds=creation.expires_in_seconds,
            metadata=creation.metadata,
            created_at=now,
            expires_at=now + timedelta(seconds=self._limits.expires_in_seconds),
            file_id=file_id,
            concat="final;" + " ".join(f"/tus/{part.id}" for part in parts),
        )

    async def _concatenated(
        self, parts: list[tuple[ResumableUpload, list[Segment]]]
    ) -> AsyncIterator[bytes]:
        for part, segments in parts:
            async for chunk in self._parts.read(part.id, segments):
                yield chunk

    async def terminate(self, principal: Principal, raw_id: str) -> None:
        """Forget the upload and its bytes (a complete one's file stays)."""
        upload = await self._find(principal, raw_id)
        await self._forget(upload)
        await self._auditor.record(principal, "upload.terminate", Outcome.SUCCESS, target=upload.id)

    async def _forget(self, upload: ResumableUpload) -> None:
        # Leftovers of a failure half-way (bytes without a row) are the purge's `stale` sweep.
        removed = await self._uploads.remove(upload.id)
        if removed is None:
            return  # another request or replica forgot it first
        with suppress(DependencyUnavailable):
            await self._parts.remove(upload.id)
        reservation = _reservation(removed)
        if reservation is not None:
            await self._uploader.release(reservation)

    async def purge(self, *, stale_after_seconds: float, batch: int = 500) -> tuple[int, int]:
        """Forget uploads past their deadline (complete ones too: their File-Id has been told),
        and segments no upload lists (their upload's removal failed half-way). Both counts."""
        expired = 0
        while True:
            due = await self._uploads.expired(now=self._clock.now(), limit=batch)
            for upload in due:
                await self._forget(upload)
                if not upload.complete:
                    expired += 1
                    await self._auditor.record(
                        Principal.system("purge"),
                        "upload.expire",
                        Outcome.SUCCESS,
                        target=upload.id,
                    )
            if len(due) < batch:
                break
        orphans = 0
        for upload_id in await self._parts.stale(older_than_seconds=stale_after_seconds):
            if await self._uploads.get(upload_id) is None:
                await self._parts.remove(upload_id)
                orphans += 1
        return expired, orphans

    @asynccontextmanager
    async def _leased(self, upload_id: UploadId, token: str) -> AsyncIterator[None]:
        """Keep the write lease alive while the request runs (a dead process loses it)."""
        every = self._limits.lock_seconds / 3
        lease = timedelta(seconds=self._limits.lock_seconds)

        async def renew() -> None:
            while True:
                await asyncio.sleep(every)
                try:
                    until = self._clock.now() + lease
                    if not await self._uploads.renew(upload_id, token=token, until=until):
                        return  # taken over, or complete: the next commit will tell
                except DependencyUnavailable:
                    continue

        task = asyncio.create_task(renew())
        try:
            yield
        finally:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task


def _reservation(upload: ResumableUpload) -> Reservation | None:
    if upload.reservation_id is None or upload.owner is None:
        return None
    return Reservation(id=upload.reservation_id, owner=upload.owner, bytes=upload.reservation_bytes)
