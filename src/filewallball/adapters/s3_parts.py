"""Resumable uploads' segments in the blobs' bucket: `<prefix>tus/<upload>/<key>`, one object per
segment, stored by a single PUT. S3 shows an object only once it is whole, so a segment is never
half there, and it needs no multipart upload (nor S3's 5 MiB part minimum) of its own.

The store takes the blob store's S3Connection, `S3PartStore(blobs.connection, ...)`, rather
than a location to connect to: one client per process and loop for both, so one connection pool
and one credential refresh, and the blob store's `aclose` closes it for both.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from contextlib import suppress
from typing import TYPE_CHECKING

import anyio
from botocore.exceptions import ClientError

from filewallball.adapters.s3 import (
    DEPENDENCY,
    READ_CHUNK_BYTES,
    MiB,
    S3Connection,
    content_md5,
    is_missing,
    s3_errors,
)
from filewallball.domain.errors import DependencyUnavailable
from filewallball.domain.models import Segment, UploadId
from filewallball.domain.ports import PartStore

if TYPE_CHECKING:
    from types_aiobotocore_s3.type_defs import ObjectIdentifierTypeDef

PARTS_DIR = "tus/"
DELETE_BATCH = 1000  # DeleteObjects' most keys a request


class S3PartStore(PartStore):
    """Segments under `<prefix>tus/`, each buffered whole (at most `segment_bytes`) for its PUT."""

    def __init__(self, connection: S3Connection, *, segment_bytes: int = 8 * MiB) -> None:
        if segment_bytes < 1:
            raise ValueError(f"a segment holds at least one byte, not {segment_bytes}")
        self._connection = connection
        self.location = connection.location
        self.segment_bytes = segment_bytes
        self._root = f"{connection.location.prefix}{PARTS_DIR}"

    def _folder(self, upload: UploadId) -> str:
        parsed = UploadId.parse(upload)  # nothing but 32 hex digits reaches a key
        if parsed is None:
            raise ValueError(f"not an upload id: {upload!r}")
        return f"{self._root}{parsed}/"

    def _name(self, upload: UploadId, key: str) -> str:
        # No '.' first either: some servers (SeaweedFS's filer) resolve `..` in a key as a path.
        if not key or "/" in key or key.startswith("."):
            raise ValueError(f"not a segment key: {key!r}")
        return self._folder(upload) + key

    async def write(self, upload: UploadId, key: str, chunks: AsyncIterator[bytes]) -> int:
        """Gather the chunks, then PUT them with their Content-MD5: nothing is stored before
        the last chunk, so the chunks' own errors (and ValueError past `segment_bytes`) leave
        nothing; a failed PUT is deleted, as it may have landed before its answer was lost."""
        name = self._name(upload, key)
        buffered: list[bytes] = []
        size = 0
        async for chunk in chunks:
            size += len(chunk)
            if size > self.segment_bytes:
                raise ValueError(f"a segment of more than {self.segment_bytes} bytes")
            buffered.append(chunk)
        data = b"".join(buffered)
        buffered.clear()
        try:
            client = await self._connection.get()
            with s3_errors(self.location, "writing a segment"):
                await client.put_object(
                    Bucket=self.location.bucket,
                    Key=name,
                    Body=data,
                    ContentMD5=await content_md5(data),
                )
        except BaseException:
            await self._delete_quietly(name)
            raise
        return size

    async def _delete_quietly(self, name: str) -> None:
        # Shielded: a cancelled write must still clean up; what fails here is left to `stale`.
        with anyio.CancelScope(shield=True), suppress(Exception):
            client = await self._connection.get()
            await client.delete_object(Bucket=self.location.bucket, Key=name)

    async def read(self, upload: UploadId, segments: Sequence[Segment]) -> AsyncIterator[bytes]:
        """One streamed GET per segment, READ_CHUNK_BYTES at a time; a segment missing, or
        shorter than committed, is DependencyUnavailable before any of its bytes."""
        names = [self._name(upload, segment.key) for segment in segments]  # all, before a GET
        client = await self._connection.get()
        for segment, name in zip(segments, names, strict=True):
            with s3_errors(self.location, "reading a segment"):
                try:
                    response = await client.get_object(Bucket=self.location.bucket, Key=name)
                except ClientError as error:
                    if is_missing(error):
                        raise self._lost(upload, segment, "is missing") from error
                    raise
            body = response["Body"]
            try:
                if response["ContentLength"] < segment.size:
                    raise self._lost(upload, segment, "is shorter than committed")
                remaining = segment.size
                with s3_errors(self.location, "reading a segment"):
                    async for piece in body.iter_chunks(READ_CHUNK_BYTES):
                        if remaining <= 0:
                            break
                        piece = piece[:remaining]
                        remaining -= len(piece)
                        yield piece
            finally:
                body.close()

    def _lost(self, upload: UploadId, segment: Segment, what: str) -> DependencyUnavailable:
        detail = f"segment {segment.key} of upload {upload} {what}"
        return DependencyUnavailable(
            DEPENDENCY, detail, diagnosis=f"{self.location.describe()}: {detail}"
        )

    async def delete(self, upload: UploadId, keys: Sequence[str]) -> None:
        await self._delete([self._name(upload, key) for key in keys])

    async def remove(self, upload: UploadId) -> None:
        folder = self._folder(upload)
        await self._delete([name async for name, _ in self._listed(folder)])

    async def stale(self, *, older_than_seconds: float) -> list[UploadId]:
        """One listing of `tus/`: an upload is as old as its newest segment."""
        cutoff = time.time() - older_than_seconds
        newest: dict[UploadId, float] = {}
        async for name, written_at in self._listed(self._root):
            folder, slash, _ = name[len(self._root) :].partition("/")
            upload = UploadId.parse(folder)
            if upload is not None and slash:
                newest[upload] = max(written_at, newest.get(upload, written_at))
        return [upload for upload, written_at in newest.items() if written_at < cutoff]

    async def _listed(self, prefix: str) -> AsyncIterator[tuple[str, float]]:
        """Every object under `prefix`: its key and when it was written (epoch seconds)."""
        client = await self._connection.get()
        with s3_errors(self.location, "listing segments"):
            pages = client.get_paginator("list_objects_v2").paginate(
                Bucket=self.location.bucket, Prefix=prefix
            )
            async for page in pages:
                for entry in page.get("Contents", []):
                    yield entry["Key"], entry["LastModified"].timestamp()

    async def _delete(self, names: Sequence[str]) -> None:
        """DeleteObjects, DELETE_BATCH keys a request. S3 answers 200 even when some keys
        could not be deleted (a missing key is not one of them): those are unavailable."""
        client = await self._connection.get()
        for start in range(0, len(names), DELETE_BATCH):
            batch: list[ObjectIdentifierTypeDef] = [
                {"Key": name} for name in names[start : start + DELETE_BATCH]
            ]
            with s3_errors(self.location, "deleting segments"):
                answer = await client.delete_objects(
                    Bucket=self.location.bucket, Delete={"Objects": batch, "Quiet": True}
                )
            failed = [
                error for error in answer.get("Errors", []) if error.get("Code") != "NoSuchKey"
            ]
            if failed:
                first = failed[0]
                raise DependencyUnavailable(
                    DEPENDENCY,
                    "blob storage is unavailable",
                    diagnosis=(
                        f"{self.location.describe()}: deleting {len(failed)} segments refused: "
                        f"{first.get('Code')} {first.get('Message', '')} ({first.get('Key')})"
                    ),
                )
