"""Use cases of the file service: they orchestrate ports; the rules stay on the models."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta

from filewallball.domain.access import Auditor
from filewallball.domain.errors import (
    FileNotFound,
    InvalidRequest,
    NotPreviewable,
    PreconditionFailed,
)
from filewallball.domain.models import (
    FileId,
    FileRecord,
    ListQuery,
    Page,
    Preview,
    Sha256,
    thumbnail_keys,
)
from filewallball.domain.ports import (
    BlobReader,
    BlobStore,
    CharsetDecoder,
    Clock,
    FileRepository,
    UsageRepository,
)
from filewallball.domain.security import Outcome, Permission, Principal
from filewallball.domain.uploads import Uploader, UploadLimits, UploadRequest

# The standard library: the domain depends on no logging framework (entrypoints.logs renders
# these records, their `extra` fields included, as JSON lines like every other).
_log = logging.getLogger("filewallball.files")

# A caller's condition on a record's current version, for a change made only if it holds.
Expectation = Callable[[FileRecord], bool]


def _require(expected: Expectation | None, record: FileRecord) -> None:
    if expected is not None and not expected(record):
        raise PreconditionFailed(
            f"file {record.id!r} has changed: its current version fails the request's precondition"
        )


class FileService:
    """Upload, read, list and delete files, as a principal may."""

    def __init__(
        self,
        *,
        files: FileRepository,
        blobs: BlobStore,
        clock: Clock,
        usage: UsageRepository,
        auditor: Auditor,
        limits: UploadLimits,
        charsets: CharsetDecoder,
        uploader: Uploader,
    ) -> None:
        self._files = files
        self._blobs = blobs
        self._clock = clock
        self._usage = usage
        self._auditor = auditor
        self._limits = limits
        self._charsets = charsets
        self._uploader = uploader

    @property
    def max_upload_bytes(self) -> int:
        return self._limits.max_upload_bytes

    async def upload(self, principal: Principal, request: UploadRequest) -> FileRecord:
        """Stream the file to durable storage, then make it visible; all or nothing."""
        return await self._uploader.upload(principal, request)

    async def get(self, principal: Principal, raw_id: str) -> FileRecord:
        """The record, read through the cache; another owner's private file does not exist."""
        principal.require(Permission.FILES_READ)
        record = await self._lookup(raw_id)
        if not principal.can_see(record):
            await self._auditor.record(principal, "file.read", Outcome.DENIED, target=record.id)
            raise FileNotFound(f"no file {raw_id!r}")
        return record

    async def _lookup(self, raw_id: str) -> FileRecord:
        file_id = FileId.parse(raw_id)
        if file_id is None:
            raise FileNotFound(f"no file {raw_id!r}")
        record = await self._files.get(file_id)
        if record is None or not record.is_live(self._clock.now()):
            raise FileNotFound(f"no file {raw_id!r}")
        return record

    async def open_record(self, principal: Principal, record: FileRecord) -> BlobReader:
        """The bytes of a record already read; `downloaded` audits them once they are sent."""
        reader = await self._blobs.open(record.sha256)
        if reader is None:
            # The file was deleted between reading the record and opening the bytes.
            raise FileNotFound(f"no file {record.id!r}")
        return reader

    async def downloaded(
        self, principal: Principal, record: FileRecord, *, sent: int, length: int
    ) -> None:
        """Audit a download when its response is over: `sent` of the `length` bytes it had to
        send (fewer when the client went away: `incomplete`), what the usage statistics add up."""
        await self._auditor.record(
            principal,
            "file.download",
            Outcome.SUCCESS,
            target=record.id,
            detail=None if sent >= length else "incomplete",
            size=sent,
        )

    async def presigned_download(
        self, principal: Principal, record: FileRecord, *, content_disposition: str
    ) -> str | None:
        """A short-lived URL the client fetches the whole file from itself (the blob store's,
        when it gives such URLs and is told to), audited as a download; else None."""
        url = await self._blobs.download_url(
            record.sha256,
            content_type=str(record.content_type),
            content_disposition=content_disposition,
        )
        if url is not None:
            await self._auditor.record(
                principal,
                "file.download",
                Outcome.SUCCESS,
                target=record.id,
                detail="presigned",
                size=record.size,
            )
        return url

    async def preview(
        self, principal: Principal, raw_id: str, *, max_lines: int | None = None
    ) -> Preview:
        """The start of a text file as UTF-8 text: at most `preview_max_bytes`, `max_lines`."""
        record = await self.get(principal, raw_id)
        if not record.previewable:
            raise NotPreviewable(f"files of type {record.content_type} have no text preview")
        reader = await self._blobs.open(record.sha256)
        if reader is None:
            raise FileNotFound(f"no file {raw_id!r}")
        try:
            wanted = min(record.size, self._limits.preview_max_bytes)
            data = b"".join([chunk async for chunk in reader.chunks(0, wanted)])
        finally:
            await reader.close()
        truncated = record.size > wanted
        decoded = self._charsets.decode(data, complete=not truncated)
        if decoded is None:
            raise NotPreviewable("the file's bytes are not text")
        text, charset = decoded
        if max_lines is not None:
            lines = text.splitlines(keepends=True)
            if len(lines) > max_lines:
                text, truncated = "".join(lines[:max_lines]), True
        await self._auditor.record(principal, "file.view", Outcome.SUCCESS, target=record.id)
        return Preview(record=record, text=text, truncated=truncated, charset=charset)

    async def list(self, principal: Principal, query: ListQuery) -> Page[FileRecord]:
        """The files the principal may see: own and public ones, or all with files:read_all."""
        principal.require(Permission.FILES_READ)
        query = replace(query, now=self._clock.now())
        if query.trash:
            # The trash is its owner's (and the admins'): others' public files are not in it.
            if not self._limits.trash_retention_seconds:
                raise InvalidRequest(
                    "the trash is not enabled (FWB_TRASH_RETENTION)", code="trash_disabled"
                )
            if not principal.can(Permission.FILES_DELETE_ALL):
                principal.require(Permission.FILES_DELETE)
                query = replace(query, owner=principal.owner or "")
        elif not principal.can(Permission.FILES_READ_ALL):
            query = replace(query, visible_to=principal.owner or "")
        return await self._files.list(query)

    async def delete(
        self, principal: Principal, raw_id: str, *, expected: Expectation | None = None
    ) -> FileRecord:
        """Remove the record at once; remove the bytes when no other record uses them.

        `expected` is the caller's condition on the record as it is now (HTTP's If-Match):
        checked once the caller may delete it, PreconditionFailed when it does not hold.
        """
        record = await self.get(principal, raw_id)
        if not principal.can_delete(record):
            # A public file of someone else: visible, so the refusal is honest about it.
            principal.require(Permission.FILES_DELETE_ALL)
        _require(expected, record)
        if self._limits.trash_retention_seconds:
            trashed = await self._files.trash(record.id, at=self._clock.now())
            if trashed is None:
                raise FileNotFound(f"no file {raw_id!r}")
            await self._auditor.record(principal, "file.trash", Outcome.SUCCESS, target=record.id)
            return trashed
        removed = await self._files.remove(record.id)
        if removed is None:
            raise FileNotFound(f"no file {raw_id!r}")
        await self._auditor.record(principal, "file.delete", Outcome.SUCCESS, target=record.id)
        await self._collect(record.sha256)
        return removed

    async def restore(
        self, principal: Principal, raw_id: str, *, expected: Expectation | None = None
    ) -> FileRecord:
        """Bring a file back from the trash (FWB_TRASH_RETENTION set), as its owner or an admin;
        `expected` as for delete."""
        if not self._limits.trash_retention_seconds:
            raise InvalidRequest(
                "the trash is not enabled (FWB_TRASH_RETENTION)", code="trash_disabled"
            )
        file_id = FileId.parse(raw_id)
        record = await self._files.get(file_id) if file_id is not None else None
        # The trash is its owner's and the admins': for anyone else the file is not there.
        if record is None or record.deleted_at is None or not principal.can_delete(record):
            raise FileNotFound(f"no file {raw_id!r} in the trash")
        _require(expected, record)
        restored = await self._files.restore(record.id)
        if restored is None:
            raise FileNotFound(f"no file {raw_id!r} in the trash")
        await self._auditor.record(principal, "file.restore", Outcome.SUCCESS, target=record.id)
        return restored

    async def purge(self, *, batch: int = 500) -> int:
        """Remove expired files and trash past its retention, bytes included; how many."""
        now = self._clock.now()
        retention = timedelta(seconds=self._limits.trash_retention_seconds)
        removed = 0
        while True:
            due = await self._files.due_for_removal(
                now=now, trashed_before=now - retention, limit=batch
            )
            for file_id in due:
                record = await self._files.remove(file_id)
                if record is None:
                    continue  # another replica purged it first
                await self._auditor.record(
                    Principal.system("purge"), "file.purge", Outcome.SUCCESS, target=file_id
                )
                await self._collect(record.sha256)
                removed += 1
            if len(due) < batch:
                return removed

    async def scrub(self, *, batch: int = 200) -> tuple[Sha256, ...]:
        """Re-hash every stored blob; the ones whose bytes no longer match their hash."""
        corrupt: list[Sha256] = []
        after: Sha256 | None = None
        while True:
            shas = await self._files.referenced_blobs(after=after, limit=batch)
            for sha256 in shas:
                reader = await self._blobs.open(sha256)
                digest = hashlib.sha256()
                if reader is not None:
                    try:
                        async for chunk in reader.chunks(0, reader.size):
                            digest.update(chunk)
                    finally:
                        await reader.close()
                if reader is None or digest.hexdigest() != sha256:
                    corrupt.append(sha256)
                    _log.error("blob_corrupt", extra={"sha256": sha256, "missing": reader is None})
                    await self._auditor.record(
                        Principal.system("scrub"), "blob.corrupt", Outcome.FAILED, target=sha256
                    )
            if len(shas) < batch:
                return tuple(corrupt)
            after = shas[-1]

    async def recover(self, *, temp_older_than_seconds: float) -> tuple[int, int]:
        """Clean up after a crash: stale temp files and blobs no record uses. Both counts."""
        swept = await self._blobs.sweep(older_than_seconds=temp_older_than_seconds)
        await self._usage.drop_expired_reservations(now=self._clock.now())
        collected = 0
        for sha256 in await self._files.unreferenced_blobs():
            collected += await self._collect(sha256)
        return swept, collected

    async def _collect(self, sha256: Sha256) -> bool:
        """Delete the bytes (and renditions) of a blob no record uses any more; whether it did."""
        async with self._files.unit_of_work() as work:
            if not await work.forget_blob(sha256):
                return False
            for key in (sha256, *thumbnail_keys(sha256)):
                await self._blobs.delete(key)
            await work.commit()
        return True
