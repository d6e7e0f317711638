"""Use cases of the file service: they orchestrate ports; the rules stay on the models."""

from __future__ import annotations

import codecs
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from filewallball.domain.errors import (
    DigestMismatch,
    FileNotFound,
    FileTooLarge,
    NotPreviewable,
)
from filewallball.domain.models import (
    ByteSize,
    ContentType,
    FileId,
    Filename,
    FileRecord,
    ListQuery,
    Page,
    Sha256,
    TypePolicy,
    Visibility,
)
from filewallball.domain.ports import BlobReader, BlobStore, Cache, Clock, FileRepository, Sniffer

# libmagic needs a few KiB for most formats; 64 KiB covers the ones that look deeper (ZIP-based
# office documents, some text heuristics) while keeping the head buffer small.
SNIFF_BYTES = 64 * 1024
_TOMBSTONE = b"-"


@dataclass
class UploadRequest:
    """An upload on its way in. Fields other than `chunks` are final once `chunks` is exhausted
    (a multipart form may carry fields after the file)."""

    filename: str
    chunks: AsyncIterator[bytes]
    visibility: Visibility = Visibility.PRIVATE
    owner: str | None = None
    expected_sha256: Sha256 | None = None
    declared_size: int | None = None


@dataclass(frozen=True, slots=True)
class Preview:
    record: FileRecord
    text: str
    truncated: bool


@dataclass
class _Meter:
    """Counts, hashes and sniffs bytes as they stream past, stopping at the size limit."""

    limit: int
    sniffer: Sniffer
    policy: TypePolicy
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
            self._hasher.update(chunk)
            if self.content_type is None:
                self._head += chunk[: SNIFF_BYTES - len(self._head)]
                if len(self._head) >= SNIFF_BYTES:
                    self._decide_type()
            yield chunk
        if self.content_type is None:
            self._decide_type()

    def _decide_type(self) -> None:
        content_type = self.sniffer.sniff(bytes(self._head))
        self.policy.check(content_type)
        self.content_type = content_type
        self._head = bytearray()

    @property
    def sha256(self) -> Sha256:
        return Sha256.from_digest(self._hasher.digest())


class FileService:
    """Upload, read, list and delete files."""

    def __init__(
        self,
        *,
        files: FileRepository,
        blobs: BlobStore,
        cache: Cache,
        sniffer: Sniffer,
        clock: Clock,
        max_upload_bytes: int,
        preview_max_bytes: int,
        type_policy: TypePolicy,
        cache_ttl_seconds: int,
    ) -> None:
        self._files = files
        self._blobs = blobs
        self._cache = cache
        self._sniffer = sniffer
        self._clock = clock
        self._max_upload_bytes = max_upload_bytes
        self._preview_max_bytes = preview_max_bytes
        self._type_policy = type_policy
        self._cache_ttl = cache_ttl_seconds

    @property
    def max_upload_bytes(self) -> int:
        return self._max_upload_bytes

    async def upload(self, request: UploadRequest) -> FileRecord:
        """Stream the file to durable storage, then make it visible; all or nothing."""
        if request.declared_size is not None and request.declared_size > self._max_upload_bytes:
            raise FileTooLarge(self._max_upload_bytes)
        meter = _Meter(self._max_upload_bytes, self._sniffer, self._type_policy)
        staged = await self._blobs.stage(meter.watch(request.chunks))
        try:
            sha256 = meter.sha256
            if request.expected_sha256 is not None and request.expected_sha256 != sha256:
                raise DigestMismatch(
                    f"the body's SHA-256 is {sha256}, not the {request.expected_sha256} declared"
                )
            record = FileRecord(
                id=FileId.new(),
                filename=Filename.sanitise(request.filename),
                size=ByteSize(meter.size),
                content_type=meter.content_type or ContentType.OCTET_STREAM,
                sha256=sha256,
                created_at=self._clock.now(),
                visibility=request.visibility,
                owner=request.owner,
            )
            await self._files.add(record, publish=lambda: staged.publish(sha256))
        finally:
            await staged.discard()
        return record

    async def get(self, raw_id: str) -> FileRecord:
        """The record, read through the cache."""
        file_id = FileId.parse(raw_id)
        if file_id is None:
            raise FileNotFound(f"no file {raw_id!r}")
        key = _cache_key(file_id)
        cached = await self._cache.get(key)
        if cached == _TOMBSTONE:
            raise FileNotFound(f"no file {raw_id!r}")
        if cached is not None:
            return FileRecord.from_json(cached)
        record = await self._files.get(file_id)
        if record is None:
            raise FileNotFound(f"no file {raw_id!r}")
        # Only fill an empty slot: a delete's tombstone written meanwhile must win.
        await self._cache.add(key, record.to_json(), ttl_seconds=self._cache_ttl)
        return record

    async def open(self, raw_id: str) -> tuple[FileRecord, BlobReader]:
        """The record and its bytes, opened: reads go on even if the file is deleted meanwhile."""
        record = await self.get(raw_id)
        return record, await self.open_record(record)

    async def preview(self, raw_id: str) -> Preview:
        """The start of a text file as text: at most `preview_max_bytes` of it."""
        record = await self.get(raw_id)
        if not record.previewable:
            raise NotPreviewable(f"files of type {record.content_type} have no text preview")
        reader = await self.open_record(record)
        try:
            wanted = min(record.size, self._preview_max_bytes)
            data = b"".join([chunk async for chunk in reader.chunks(0, wanted)])
        finally:
            await reader.close()
        truncated = record.size > wanted
        # A cut may split a multi-byte character: the incremental decoder holds it back.
        text = codecs.getincrementaldecoder("utf-8")("replace").decode(data, final=not truncated)
        return Preview(record=record, text=text, truncated=truncated)

    async def open_record(self, record: FileRecord) -> BlobReader:
        """The bytes of a record already read; FileNotFound if it was deleted meanwhile."""
        reader = await self._blobs.open(record.sha256)
        if reader is None:
            # The file was deleted between reading the record and opening the bytes.
            await self._cache.delete(_cache_key(record.id))
            raise FileNotFound(f"no file {record.id!r}")
        return reader

    async def list(self, query: ListQuery) -> Page[FileRecord]:
        return await self._files.list(query)

    async def delete(self, raw_id: str) -> FileRecord:
        """Remove the record at once; remove the bytes when no other record uses them."""
        file_id = FileId.parse(raw_id)
        record = await self._files.remove(file_id) if file_id is not None else None
        if record is None:
            raise FileNotFound(f"no file {raw_id!r}")
        await self._cache.set(_cache_key(record.id), _TOMBSTONE, ttl_seconds=self._cache_ttl)
        await self._collect(record.sha256)
        return record

    async def recover(self, *, temp_older_than_seconds: float) -> tuple[int, int]:
        """Clean up after a crash: stale temp files and blobs no record uses. Both counts."""
        swept = await self._blobs.sweep(older_than_seconds=temp_older_than_seconds)
        collected = 0
        for sha256 in await self._files.unreferenced_blobs():
            collected += await self._collect(sha256)
        return swept, collected

    async def _collect(self, sha256: Sha256) -> bool:
        return await self._files.collect_blob(sha256, delete=lambda: self._blobs.delete(sha256))


def _cache_key(file_id: FileId) -> str:
    return f"file:{file_id}"
