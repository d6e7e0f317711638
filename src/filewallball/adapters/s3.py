"""Content-addressed blobs in an S3-compatible bucket (AWS, MinIO, SeaweedFS, Ceph RGW).

Layout under the prefix: `blobs/<sha256>` holds published blobs and renditions, `tmp/<name>`
what is being staged. An upload streams into a temporary object, a part at a time (at most
`part_size` bytes buffered, plus the parts in flight); once it is complete, `publish` copies it
server-side onto its hash and removes the temporary one. So an object under `blobs/` is always
complete, and nothing of a failed upload is left: its multipart upload is aborted, its temporary
object deleted, and what a killed process left is swept by age.

The client is aiobotocore (botocore's full S3 API and credential chain, asynchronously): the
maintenance sweep needs ListMultipartUploads and ListParts, publishing an object over 5 GiB
needs UploadPartCopy, and credentials come from the standard AWS chain (environment, profiles,
web identity, instance roles).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
import os
import secrets
import socket
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, contextmanager, suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
import anyio
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from filewallball.domain.errors import DependencyUnavailable, StorageFull
from filewallball.domain.models import Sha256
from filewallball.domain.ports import BlobReader, BlobStore, StagedBlob

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef, CopySourceTypeDef

MiB = 1024 * 1024
GiB = 1024 * MiB
MIN_PART_BYTES = 5 * MiB  # S3's smallest part but the last
MAX_PARTS = 10_000  # S3's most parts in one upload
MAX_COPY_BYTES = 5 * GiB  # CopyObject's limit; larger objects are copied in parts
# Objects larger than this are published by parallel UploadPartCopy: on SeaweedFS a 256 MiB
# object took 2.0 s with one CopyObject and 1.4 s in 16 MiB parts, 8 at a time.
PART_COPY_ABOVE = 256 * MiB
COPY_PART_BYTES = 64 * MiB
COPY_CONCURRENCY = 8
READ_CHUNK_BYTES = 256 * 1024
HEAD_CACHE_ENTRIES = 10_000  # about 1.5 MB
DEPENDENCY = "blob storage"
# Error codes that mean "no room", from AWS (a bucket quota), MinIO and Ceph RGW.
_FULL_CODES = frozenset({"QuotaExceeded", "XMinioStorageFull", "InsufficientStorage"})
_MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_TRANSPORT_ERRORS = (BotoCoreError, aiohttp.ClientError, asyncio.TimeoutError, OSError)


class MissingBucket(DependencyUnavailable):
    """The bucket does not exist: a setting to fix (FileWallBall never creates one)."""


@dataclass(frozen=True, slots=True)
class S3Location:
    """Where the blobs are: the bucket, the endpoint (None: AWS), the prefix of every key."""

    bucket: str
    endpoint_url: str | None = None
    region: str | None = None
    prefix: str = "filewallball/"
    addressing_style: str = "auto"  # auto: path-style with an endpoint URL, else virtual

    def describe(self) -> str:
        return f"S3 bucket {self.bucket!r} at {self.endpoint_url or 'AWS'}"


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _status(error: ClientError) -> int:
    return int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def is_missing(error: ClientError) -> bool:
    return _code(error) in _MISSING_CODES or (
        _status(error) == 404 and _code(error) != "NoSuchBucket"
    )


@contextmanager
def s3_errors(location: S3Location, doing: str) -> Iterator[None]:
    """Turn S3 errors into domain errors: no room → StorageFull, anything else unavailable."""
    try:
        yield
    except ClientError as error:
        code, status = _code(error), _status(error)
        if code in _FULL_CODES:
            raise StorageFull("the blob storage is full") from error
        if code == "NoSuchBucket":
            reason = f"the bucket does not exist ({code})"
        else:
            message = error.response.get("Error", {}).get("Message") or ""
            reason = f"{doing} refused: {code or status} {message}".strip()
        raise DependencyUnavailable(
            DEPENDENCY, "blob storage is unavailable", diagnosis=f"{location.describe()}: {reason}"
        ) from error
    except _TRANSPORT_ERRORS as error:
        reason = str(error) or type(error).__name__
        raise DependencyUnavailable(
            DEPENDENCY,
            "blob storage is unavailable",
            diagnosis=f"{location.describe()}: {doing} failed: {reason}",
        ) from error


class S3Connection:
    """One aiobotocore client per process and event loop, made on first use (after a fork, in
    the loop that uses it: its connections belong to that loop), closed by aclose. The blob
    store owns it; the part store (s3_parts.py) shares it, and so its connection pool."""

    def __init__(self, location: S3Location, *, max_connections: int = 64) -> None:
        self.location = location
        self._max_connections = max_connections
        self._client: S3Client | None = None
        self._owner: tuple[int, asyncio.AbstractEventLoop] | None = None
        self._stack: AsyncExitStack | None = None
        self._lock: asyncio.Lock | None = None

    async def get(self) -> S3Client:
        owner = (os.getpid(), asyncio.get_running_loop())
        if self._client is not None and self._owner == owner:
            return self._client
        if self._lock is None or self._owner != owner:
            # Another process or loop: what was made there cannot be used (nor closed) here.
            self._lock, self._client, self._stack, self._owner = asyncio.Lock(), None, None, owner
        async with self._lock:
            if self._client is None:
                self._client = await self._open()
        return self._client

    async def _open(self) -> S3Client:
        style = self.location.addressing_style
        if style == "auto":
            style = "path" if self.location.endpoint_url else "virtual"
        config = AioConfig(
            connect_timeout=5,
            read_timeout=60,
            retries={"max_attempts": 3, "mode": "standard"},
            max_pool_connections=self._max_connections,
            # The body is not SHA-256 signed (botocore would hash every part in the event loop,
            # on plain http): its Content-MD5, computed in a thread and signed, protects it.
            s3={"addressing_style": style, "payload_signing_enabled": False},
            # SigV4 everywhere, presigned URLs included (botocore presigns with V2 otherwise).
            signature_version="s3v4",
        )
        stack = AsyncExitStack()
        client = await stack.enter_async_context(
            get_session().create_client(
                "s3",
                endpoint_url=self.location.endpoint_url,
                region_name=self.location.region,
                config=config,
            )
        )
        self._stack = stack
        return client

    async def aclose(self) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None and self._owner == (os.getpid(), asyncio.get_running_loop()):
            await stack.aclose()


class S3StagedBlob(StagedBlob):
    """A complete temporary object, waiting to be copied onto its hash."""

    def __init__(self, store: S3BlobStore, *, key: str, size: int) -> None:
        self._store = store
        self._key = key
        self.size = size
        self._done = False
        self._published: Sha256 | None = None

    async def publish(self, sha256: Sha256) -> None:
        """Copy onto `blobs/<sha>` (unless identical bytes are there already), then remove the
        temporary object; again with the same sha: no-op."""
        if self._published == sha256:
            return
        if self._done:
            raise RuntimeError("this staged blob was already published or discarded")
        await self._store._publish(self._key, sha256, size=self.size)
        self._done = True
        self._published = sha256
        await self._store._remove_quietly(self._key)

    async def discard(self) -> None:
        """Remove the temporary object unless published; safe to call more than once."""
        if not self._done:
            self._done = True
            await self._store._remove_quietly(self._key)


class S3BlobReader(BlobReader):
    """A blob found by HEAD (or known from one); each `chunks` call is one ranged, streamed GET.

    Unlike a file descriptor, it does not keep a deleted blob readable: a read after the blob
    was deleted raises DependencyUnavailable (S3 has no open handles). Blobs are deleted only
    once no record uses them, so this only meets a download that outlives its file's deletion.
    """

    path: str | None = None

    def __init__(self, store: S3BlobStore, *, key: str, size: int) -> None:
        self._store = store
        self._key = key
        self.size = size
        self._closed = False

    async def chunks(self, start: int, length: int) -> AsyncIterator[bytes]:
        """The bytes `start .. start+length`, cut at the end of the blob, 256 KiB at a time."""
        if start < 0 or length < 0:
            raise ValueError(f"not a byte range: start={start}, length={length}")
        end = min(start + length, self.size)
        if start >= end:
            return
        if self._closed:
            raise RuntimeError("the blob reader is closed")
        client = await self._store.connection.get()
        location = self._store.location
        with s3_errors(location, "reading a blob"):
            try:
                response = await client.get_object(
                    Bucket=location.bucket,
                    Key=self._key,
                    # No If-Match: the bytes under a hash's key are always the same bytes.
                    Range=f"bytes={start}-{end - 1}",
                )
            except ClientError as error:
                if is_missing(error):
                    self._store._forget(self._key)
                    raise DependencyUnavailable(
                        DEPENDENCY,
                        "the blob was deleted while it was read",
                        diagnosis=f"{location.describe()}: {self._key} vanished during a read",
                    ) from error
                raise
        body = response["Body"]
        try:
            with s3_errors(location, "reading a blob"):
                async for piece in body.iter_chunks(READ_CHUNK_BYTES):
                    yield piece
        finally:
            body.close()

    async def close(self) -> None:
        self._closed = True


class S3BlobStore(BlobStore):
    """Blobs at `<prefix>blobs/<sha256>` in one bucket, staged under `<prefix>tmp/`."""

    def __init__(
        self,
        location: S3Location,
        *,
        part_size: int = 8 * MiB,
        max_object_bytes: int = 5 * GiB,
        upload_concurrency: int = 2,
        max_connections: int = 64,
        presign_expires_seconds: int | None = None,
    ) -> None:
        if part_size < MIN_PART_BYTES:
            raise ValueError(f"S3 parts are at least {MIN_PART_BYTES} bytes, not {part_size}")
        self.location = location
        # Enough for the largest upload in S3's 10,000 parts.
        self.part_size = max(part_size, math.ceil(max_object_bytes / MAX_PARTS))
        self._upload_concurrency = upload_concurrency
        self._presign_expires = presign_expires_seconds
        self.connection = S3Connection(location, max_connections=max_connections)
        self._blobs = f"{location.prefix}blobs/"
        self._tmp = f"{location.prefix}tmp/"
        # Sizes of the objects looked up lately: a stored object never changes (its key is
        # its hash), so a download needs one GET, not a HEAD and a GET. A deleted one is
        # forgotten here, or by the first GET that misses it (on another replica).
        self._sizes: OrderedDict[str, int] = OrderedDict()

    def key(self, sha256: Sha256) -> str:
        # Re-validating keeps any string that is not 64 lowercase hex digits out of the key.
        return self._blobs + Sha256(sha256)

    def _temp_key(self) -> str:
        return f"{self._tmp}{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(12)}"

    async def aclose(self) -> None:
        await self.connection.aclose()

    # -- staging ---------------------------------------------------------------------------

    async def stage(self, chunks: AsyncIterator[bytes]) -> StagedBlob:
        """Stream every chunk into a temporary object: one PUT when it fits in a part, else a
        multipart upload with at most `upload_concurrency` parts in flight. On any error the
        multipart upload is aborted (or the object deleted) and the error re-raised as is."""
        key = self._temp_key()
        buffered: list[bytes] = []
        buffered_bytes = 0
        upload: _MultipartUpload | None = None
        try:
            async for chunk in chunks:
                buffered.append(chunk)
                buffered_bytes += len(chunk)
                if buffered_bytes >= self.part_size:
                    if upload is None:
                        upload = await self._begin(key)
                    part, buffered, buffered_bytes = buffered, [], 0
                    await upload.send(part)
            if upload is None:
                await self._put(key, b"".join(buffered))
                size = buffered_bytes
            else:
                if buffered_bytes:
                    await upload.send(buffered)
                await upload.complete()
                size = upload.size
        except BaseException:
            with anyio.CancelScope(shield=True), suppress(Exception):
                if upload is not None:
                    await upload.abort()
            raise
        return S3StagedBlob(self, key=key, size=size)

    async def _put(self, key: str, data: bytes) -> None:
        client = await self.connection.get()
        with s3_errors(self.location, "writing a blob"):
            await client.put_object(
                Bucket=self.location.bucket, Key=key, Body=data, ContentMD5=await content_md5(data)
            )

    async def _begin(self, key: str) -> _MultipartUpload:
        client = await self.connection.get()
        with s3_errors(self.location, "starting a multipart upload"):
            started = await client.create_multipart_upload(Bucket=self.location.bucket, Key=key)
        return _MultipartUpload(
            client, self.location, key, started["UploadId"], concurrency=self._upload_concurrency
        )

    async def _publish(self, temp_key: str, sha256: Sha256, *, size: int) -> None:
        final = self.key(sha256)
        if await self._head(final) is not None:
            return  # the same bytes are stored already: content-addressed
        client = await self.connection.get()
        source: CopySourceTypeDef = {"Bucket": self.location.bucket, "Key": temp_key}
        if size <= PART_COPY_ABOVE:
            with s3_errors(self.location, "publishing a blob"):
                await client.copy_object(Bucket=self.location.bucket, Key=final, CopySource=source)
            return
        upload = await self._begin(final)
        try:
            await upload.copy_parts(source, size=size)
            await upload.complete()
        except BaseException:
            with anyio.CancelScope(shield=True), suppress(Exception):
                await upload.abort()
            raise

    async def _remove_quietly(self, key: str) -> None:
        # Shielded: a cancelled upload must still clean up; a failure here is left to `sweep`.
        with anyio.CancelScope(shield=True), suppress(Exception):
            client = await self.connection.get()
            await client.delete_object(Bucket=self.location.bucket, Key=key)

    # -- reading ---------------------------------------------------------------------------

    async def _head(self, key: str) -> dict[str, Any] | None:
        client = await self.connection.get()
        with s3_errors(self.location, "looking up a blob"):
            try:
                return dict(await client.head_object(Bucket=self.location.bucket, Key=key))
            except ClientError as error:
                if is_missing(error):
                    return None
                raise

    async def open(self, sha256: Sha256) -> BlobReader | None:
        key = self.key(sha256)
        size = self._sizes.get(key)
        if size is None:
            head = await self._head(key)
            if head is None:
                return None
            size = self._sizes[key] = int(head["ContentLength"])
            if len(self._sizes) > HEAD_CACHE_ENTRIES:
                self._sizes.popitem(last=False)
        else:
            self._sizes.move_to_end(key)
        return S3BlobReader(self, key=key, size=size)

    def _forget(self, key: str) -> None:
        self._sizes.pop(key, None)

    async def exists(self, sha256: Sha256) -> bool:
        return await self._head(self.key(sha256)) is not None

    async def delete(self, sha256: Sha256) -> None:
        key = self.key(sha256)
        self._forget(key)
        client = await self.connection.get()
        with s3_errors(self.location, "deleting a blob"):
            await client.delete_object(Bucket=self.location.bucket, Key=key)

    async def download_url(
        self, sha256: Sha256, *, content_type: str, content_disposition: str
    ) -> str | None:
        """A short-lived presigned GET of the whole blob, when presigned downloads are on."""
        if self._presign_expires is None:
            return None
        client = await self.connection.get()
        with s3_errors(self.location, "signing a download"):
            return await client.generate_presigned_url(
                "get_object",
                Params={
                    "Bucket": self.location.bucket,
                    "Key": self.key(sha256),
                    "ResponseContentType": content_type,
                    "ResponseContentDisposition": content_disposition,
                    "ResponseCacheControl": "private, no-store",
                },
                ExpiresIn=self._presign_expires,
            )

    # -- housekeeping ----------------------------------------------------------------------

    async def sweep(self, *, older_than_seconds: float) -> int:
        """Delete temporary objects and abort multipart uploads under `tmp/` untouched for
        `older_than_seconds` (an upload in progress keeps sending parts); how many."""
        cutoff = time.time() - older_than_seconds
        client = await self.connection.get()
        bucket = self.location.bucket
        removed = 0
        with s3_errors(self.location, "sweeping temporary objects"):
            pages = client.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=self._tmp
            )
            async for page in pages:
                for entry in page.get("Contents", []):
                    if entry["LastModified"].timestamp() < cutoff:
                        await client.delete_object(Bucket=bucket, Key=entry["Key"])
                        removed += 1
            uploads = client.get_paginator("list_multipart_uploads").paginate(
                Bucket=bucket, Prefix=self.location.prefix
            )
            async for listed in uploads:
                for upload in listed.get("Uploads", []):
                    if upload["Initiated"].timestamp() >= cutoff:
                        continue
                    if await self._last_part_at(upload["Key"], upload["UploadId"]) >= cutoff:
                        continue  # started long ago, still sending
                    with suppress(ClientError):  # finished or aborted meanwhile
                        await client.abort_multipart_upload(
                            Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                        )
                        removed += 1
        return removed

    async def _last_part_at(self, key: str, upload_id: str) -> float:
        client = await self.connection.get()
        newest = 0.0
        try:
            parts = client.get_paginator("list_parts").paginate(
                Bucket=self.location.bucket, Key=key, UploadId=upload_id
            )
            async for page in parts:
                for part in page.get("Parts", []):
                    newest = max(newest, part["LastModified"].timestamp())
        except ClientError:
            return 0.0
        return newest

    async def check_writable(self) -> None:
        """The bucket exists, and a probe object can be written and removed; else
        DependencyUnavailable (MissingBucket for the first). The bucket is looked up first:
        MinIO and SeaweedFS make a missing one at the first PUT of an admin, and a restore into
        a mistyped FWB_S3_BUCKET would fill a new bucket."""
        await self.check_bucket()
        client = await self.connection.get()
        key = f"{self._tmp}probe-{secrets.token_hex(8)}"
        with s3_errors(self.location, "writing a probe object"):
            await client.put_object(Bucket=self.location.bucket, Key=key, Body=b"ok")
            await client.delete_object(Bucket=self.location.bucket, Key=key)

    async def check_bucket(self) -> None:
        """Raise DependencyUnavailable unless the bucket exists and these credentials reach it."""
        client = await self.connection.get()
        with s3_errors(self.location, "looking up the bucket"):
            try:
                await client.head_bucket(Bucket=self.location.bucket)
            except ClientError as error:
                if _status(error) == 404:
                    raise MissingBucket(
                        DEPENDENCY,
                        "blob storage is unavailable",
                        diagnosis=f"{self.location.describe()}: the bucket does not exist",
                    ) from error
                raise

    async def free_bytes(self) -> int | None:
        return None  # S3 does not tell


async def content_md5(data: bytes) -> str:
    """Content-MD5 of a body, off the event loop (hashlib releases the GIL): S3 checks it, and
    botocore would otherwise compute it in the loop, 15 ms for an 8 MiB part."""
    if len(data) < 64 * 1024:
        digest = hashlib.md5(data, usedforsecurity=False).digest()
    else:
        digest = await anyio.to_thread.run_sync(
            lambda: hashlib.md5(data, usedforsecurity=False).digest()
        )
    return base64.b64encode(digest).decode()


class _MultipartUpload:
    """One multipart upload: parts sent in order, at most `concurrency` in flight."""

    def __init__(
        self,
        client: S3Client,
        location: S3Location,
        key: str,
        upload_id: str,
        *,
        concurrency: int,
    ) -> None:
        self._client = client
        self._location = location
        self._key = key
        self._upload_id = upload_id
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: list[asyncio.Task[CompletedPartTypeDef]] = []
        self.size = 0

    async def send(self, chunks: list[bytes]) -> None:
        """Queue the next part, made of `chunks` (emptied); waits while `concurrency` parts are
        in flight, and only then joins them: memory holds one part being filled, one being
        joined, and those in flight."""
        await self._slots.acquire()
        try:
            self._raise_failed()
        except BaseException:
            self._slots.release()
            raise
        data = b"".join(chunks)
        chunks.clear()
        number = len(self._tasks) + 1
        self.size += len(data)
        self._tasks.append(asyncio.create_task(self._upload_part(number, data)))

    async def _upload_part(self, number: int, data: bytes) -> CompletedPartTypeDef:
        try:
            with s3_errors(self._location, "uploading a part"):
                sent = await self._client.upload_part(
                    Bucket=self._location.bucket,
                    Key=self._key,
                    UploadId=self._upload_id,
                    PartNumber=number,
                    Body=data,
                    ContentMD5=await content_md5(data),
                )
            return {"PartNumber": number, "ETag": sent["ETag"]}
        finally:
            self._slots.release()

    async def copy_parts(self, source: CopySourceTypeDef, *, size: int) -> None:
        part = max(COPY_PART_BYTES, math.ceil(size / MAX_PARTS))
        slots = asyncio.Semaphore(COPY_CONCURRENCY)

        async def copy(number: int, first: int) -> CompletedPartTypeDef:
            last = min(size, first + part) - 1
            async with slots:
                with s3_errors(self._location, "publishing a blob"):
                    copied = await self._client.upload_part_copy(
                        Bucket=self._location.bucket,
                        Key=self._key,
                        UploadId=self._upload_id,
                        PartNumber=number,
                        CopySource=source,
                        CopySourceRange=f"bytes={first}-{last}",
                    )
            return {"PartNumber": number, "ETag": copied["CopyPartResult"]["ETag"]}

        starts = range(0, size, part)
        self._tasks = [asyncio.create_task(copy(n, s)) for n, s in enumerate(starts, start=1)]
        self.size = size

    def _raise_failed(self) -> None:
        for task in self._tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]

    async def complete(self) -> None:
        parts = await asyncio.gather(*self._tasks)
        with s3_errors(self._location, "completing a multipart upload"):
            await self._client.complete_multipart_upload(
                Bucket=self._location.bucket,
                Key=self._key,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": list(parts)},
            )

    async def abort(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._client.abort_multipart_upload(
            Bucket=self._location.bucket, Key=self._key, UploadId=self._upload_id
        )
