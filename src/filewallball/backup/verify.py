"""Verify an archive: read it once, as a stream, through every check a restore makes."""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import sqlite3
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import anyio
import anyio.to_thread

from filewallball.backup.check import ArchiveCheck
from filewallball.backup.format import BackupError, Digest, Header, Manifest, MemberKind
from filewallball.backup.instance import NoProgress, Progress
from filewallball.backup.reader import ArchiveReader, Member


async def verify_backup(path: Path, *, progress: Progress | None = None) -> Manifest:
    """Read the whole archive and check it; its manifest, or BackupError saying what is wrong."""
    progress = progress or NoProgress()
    async with scratch_dir(path.parent) as staging, ArchiveReader(path) as reader:
        with ledger_errors(staging):
            check = ArchiveCheck(staging)
        try:
            progress.start(f"verifying {path.name}", total=reader.total)

            def tick() -> None:
                progress.update(reader.position)

            async def hash_blob(member: Member) -> Digest:
                digest = hashlib.sha256()
                async for chunk in member.chunks():
                    digest.update(chunk)
                    tick()
                return Digest(size=member.size, sha256=digest.hexdigest())

            with ledger_errors(staging):
                return await read_archive(reader, check, store_blob=hash_blob, tick=tick)
        finally:
            check.close()


async def read_archive(
    reader: ArchiveReader,
    check: ArchiveCheck,
    *,
    store_blob: Callable[[Member], Awaitable[Digest]],
    tick: Callable[[], None],
    on_header: Callable[[Header], Awaitable[None]] | None = None,
) -> Manifest:
    async for member in reader.members():
        check.expect(member)
        if member.kind is MemberKind.HEADER:
            header = await check.read_header(member)
            if on_header is not None:
                await on_header(header)
        elif member.kind is MemberKind.BLOB:
            await check.record_blob(member.name, await store_blob(member))
        elif member.kind is MemberKind.MANIFEST:
            await check.read_manifest(member)
        else:
            await check.spool(member)
        tick()
    return await check.finish()


@contextlib.contextmanager
def ledger_errors(staging: Path) -> Iterator[None]:
    """The check's scratch ledger failing (a full or broken disk): a BackupError saying so."""
    try:
        yield
    except sqlite3.Error as error:
        raise BackupError(f"the scratch ledger in {staging} failed: {error}") from error


@contextlib.asynccontextmanager
async def scratch_dir(near: Path) -> AsyncIterator[Path]:
    """A private scratch directory beside `near` if writable there, else in the temp dir."""

    def make() -> Path:
        try:
            return Path(tempfile.mkdtemp(prefix=".fwb-backup-", dir=near))
        except OSError:
            return Path(tempfile.mkdtemp(prefix="fwb-backup-"))

    path = await anyio.to_thread.run_sync(make)
    try:
        yield path
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(lambda: shutil.rmtree(path, ignore_errors=True))
