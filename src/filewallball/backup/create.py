"""Create an archive of a whole instance while it serves: a metadata snapshot, then its blobs."""

# Consistency while the service is serving: the metadata is read in one snapshot, then the blobs
# that snapshot references are copied. Blobs never change (they are named by their SHA-256), so
# a blob read later is the blob the snapshot meant; the only thing that can happen meanwhile is
# that a DELETE removes every file using a blob and the blob with them. Those files are then
# left out and listed (skipped.jsonl, and the result): the archive is the snapshot minus files
# deleted while it was written, never a record without its bytes.

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.to_thread
from sqlalchemy.ext.asyncio import AsyncEngine

from filewallball import __version__
from filewallball.backup.format import (
    BLOB_INDEX,
    HEADER,
    MANIFEST,
    SECRET,
    SKIPPED,
    TABLES,
    BackupError,
    Digest,
    Header,
    Manifest,
    SecretInfo,
    blob_member,
    table_member,
)
from filewallball.backup.instance import Instance, NoProgress, Progress
from filewallball.backup.rows import dumps_line
from filewallball.backup.snapshot import Snapshot, read_snapshot, references
from filewallball.backup.writer import ArchiveWriter
from filewallball.domain.models import Sha256
from filewallball.domain.ports import BlobReader, BlobStore
from filewallball.secret_file import SecretSource

DELETED = "deleted"  # every file using the blob was deleted after the snapshot
MISSING = "missing"  # the blob is gone though files use it (only with skip_missing)


@dataclass(frozen=True, slots=True)
class SkippedFile:
    file_id: str
    sha256: str
    reason: str


@dataclass(frozen=True, slots=True)
class BackupResult:
    path: Path
    manifest: Manifest
    skipped: list[SkippedFile]
    audit_error: str | None = None  # the archive is sound, but its audit entry is missing


async def create_backup(
    out: Path,
    instance: Instance,
    *,
    skip_missing: bool = False,
    progress: Progress | None = None,
    after_snapshot: Callable[[], Awaitable[None]] | None = None,
) -> BackupResult:
    """Write the archive to `out` (gzip when it ends in .tar.gz or .tgz), atomically.

    `after_snapshot` runs between the metadata snapshot and the blob copy (tests race it).
    """
    progress = progress or NoProgress()
    engine = instance.engine
    secret = await instance.secret()
    out = Path(await anyio.Path(out).absolute())
    if not await anyio.Path(out.parent).is_dir():
        raise BackupError(f"{out.parent} is not a directory")
    # The spool sits beside the archive: the backup volume has the room, /tmp may not.
    spool = Path(
        await anyio.to_thread.run_sync(tempfile.mkdtemp, None, f".{out.name}.", out.parent)
    )
    try:
        progress.start("reading the metadata", total=None)
        snapshot = await read_snapshot(engine, spool)
        if after_snapshot is not None:
            await after_snapshot()
        header = Header(
            created_at=snapshot.taken_at,
            source_backend=engine.dialect.name,
            schema_revision=snapshot.revision,
            app_version=__version__,
            secret=SecretInfo.of(secret),
            api_keys=snapshot.rows["api_keys"],
        )
        writer = await ArchiveWriter.create(out, mtime=snapshot.taken_at.timestamp())
        try:
            written = _Writing(writer, snapshot, spool, progress)
            skipped = await written.run(
                header,
                engine=engine,
                blobs=instance.blobs,
                secret_file=secret.stored,
                skip_missing=skip_missing,
            )
            await writer.commit()
        except BaseException:
            await writer.abort()
            raise
    finally:
        await anyio.to_thread.run_sync(lambda: shutil.rmtree(spool, ignore_errors=True))
    assert written.manifest is not None
    manifest = written.manifest
    # After the snapshot, so it is not in this archive: in the source's log, and the next one.
    audit_error = await instance.record(
        "backup.create",
        target=out.name,
        detail=f"{manifest.rows['files']} files, {manifest.blobs} blobs, {len(skipped)} skipped",
        size=(await anyio.Path(out).stat()).st_size,
    )
    return BackupResult(path=out, manifest=manifest, skipped=skipped, audit_error=audit_error)


class _Writing:
    """One archive being written from a snapshot."""

    def __init__(
        self, writer: ArchiveWriter, snapshot: Snapshot, spool: Path, progress: Progress
    ) -> None:
        self._writer = writer
        self._snapshot = snapshot
        self._spool = spool
        self._progress = progress
        self._members: dict[str, Digest] = {}
        self._copied = 0
        self._copied_bytes = 0
        self.manifest: Manifest | None = None

    async def run(
        self,
        header: Header,
        *,
        engine: AsyncEngine,
        blobs: BlobStore,
        secret_file: bytes | None,
        skip_missing: bool,
    ) -> list[SkippedFile]:
        writer, snapshot = self._writer, self._snapshot
        self._members[HEADER] = await writer.add_bytes(HEADER, _json(header.to_json()))
        left_out = await self._copy_blobs(engine, blobs, skip_missing=skip_missing)
        skipped = await anyio.to_thread.run_sync(_drop_skipped, snapshot, left_out, self._spool)
        for table in TABLES:
            name = table_member(table)
            self._members[name] = await writer.add_file(name, snapshot.spools[table])
        for name in (BLOB_INDEX, SKIPPED):
            self._members[name] = await writer.add_file(name, self._spool / name)
        if header.secret.source is SecretSource.FILE:
            # A restore installs it where the target has none: the keys' hashes need it.
            if secret_file is None:
                raise BackupError("the server secret comes from a file, but it was not read")
            self._members[SECRET] = await writer.add_bytes(SECRET, secret_file)
        self.manifest = Manifest(
            header=header,
            rows=dict(snapshot.rows),
            blobs=self._copied,
            blob_bytes=self._copied_bytes,
            skipped=len(skipped),
            members=self._members,
        )
        await writer.add_bytes(MANIFEST, self.manifest.to_json())
        return skipped

    async def _copy_blobs(
        self, engine: AsyncEngine, blobs: BlobStore, *, skip_missing: bool
    ) -> dict[str, str]:
        """Copy every blob of the snapshot; the ones left out, with the reason."""
        self._progress.start("copying blobs", total=self._snapshot.blob_bytes)
        left_out: dict[str, str] = {}
        index = await anyio.to_thread.run_sync((self._spool / BLOB_INDEX).open, "wb")
        try:
            async for sha, size in _copy_list(self._snapshot.copy_list):
                opened = await _open_blob(engine, blobs, sha, skip_missing=skip_missing)
                if isinstance(opened, str):
                    left_out[sha] = opened
                    continue
                try:
                    digest = await self._writer.add(
                        blob_member(sha), self._metered(opened), size=opened.size
                    )
                finally:
                    await opened.close()
                if digest.sha256 != sha:
                    raise BackupError(
                        f"blob {sha} is corrupt in the blob store (its bytes hash to "
                        f"{digest.sha256}); the scrub job reports such blobs: restore the "
                        "files that use it from an older backup"
                    )
                if digest.size != size:
                    raise BackupError(f"blob {sha} has {digest.size} bytes, its files say {size}")
                await anyio.to_thread.run_sync(
                    index.write, dumps_line({"sha256": sha, "size": size})
                )
                self._copied += 1
        finally:
            await anyio.to_thread.run_sync(index.close)
        return left_out

    async def _metered(self, reader: BlobReader) -> AsyncIterator[bytes]:
        async for chunk in reader.chunks(0, reader.size):
            self._copied_bytes += len(chunk)
            self._progress.update(self._copied_bytes)
            yield chunk


async def _copy_list(path: Path) -> AsyncIterator[tuple[str, int]]:
    """The snapshot's blobs, read a batch at a time."""
    handle = await anyio.to_thread.run_sync(path.open, "r")
    try:
        while lines := await anyio.to_thread.run_sync(handle.readlines, 64 * 1024):
            for line in lines:
                sha, size = line.split()
                yield sha, int(size)
    finally:
        await anyio.to_thread.run_sync(handle.close)


async def _open_blob(
    engine: AsyncEngine, blobs: BlobStore, sha: str, *, skip_missing: bool
) -> BlobReader | str:
    """The blob, opened (it stays readable even if deleted now); else why it is left out."""
    reader = await blobs.open(Sha256(sha))
    if reader is not None:
        return reader
    if await references(engine, sha) == 0:
        return DELETED
    # Still in use: maybe uploaded again just now (bytes are published before the record
    # commits), so look once more before calling it lost.
    reader = await blobs.open(Sha256(sha))
    if reader is not None:
        return reader
    if skip_missing:
        return MISSING
    raise BackupError(
        f"blob {sha} is missing from the blob store though files still use it: restore it, or "
        "pass --skip-missing to back up everything else (the files are listed in the archive)"
    )


def _drop_skipped(snapshot: Snapshot, left_out: dict[str, str], spool: Path) -> list[SkippedFile]:
    """Take the files whose blobs were left out (and those blobs) out of the spooled tables."""
    skipped: list[SkippedFile] = []
    with (spool / SKIPPED).open("wb") as listing:
        if not left_out:
            return skipped
        for table in ("files", "blobs"):
            kept = snapshot.spools[table].with_suffix(".kept")
            with snapshot.spools[table].open("rb") as rows, kept.open("wb") as out:
                for line in rows:
                    row = json.loads(line)
                    reason = left_out.get(row["sha256"])
                    if reason is None:
                        out.write(line)
                        continue
                    snapshot.rows[table] -= 1
                    if table == "files":
                        entry = SkippedFile(row["id"], row["sha256"], reason)
                        skipped.append(entry)
                        listing.write(
                            dumps_line(
                                {"file_id": entry.file_id, "sha256": entry.sha256, "reason": reason}
                            )
                        )
            os.replace(kept, snapshot.spools[table])
    return skipped


def _json(data: dict[str, object]) -> bytes:
    return json.dumps(data, indent=2, sort_keys=True).encode() + b"\n"
