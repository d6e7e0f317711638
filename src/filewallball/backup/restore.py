"""Restore an archive into an empty instance: all of it, or (on any error) none of it."""

# The archive is read once, as a stream, through verify's checks; the blobs go through the blob
# store as they pass and the metadata is committed in one transaction at the end. After a
# failure only the blobs this restore created are deleted: a blob file that was on the target's
# volume before (a lost database, a surviving data volume) is never removed.

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.to_thread
from alembic.util import CommandError
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from filewallball.adapters.sql import upgrade
from filewallball.backup.check import ArchiveCheck
from filewallball.backup.format import (
    BLOB_PREFIX,
    TABLES,
    BackupError,
    Digest,
    Header,
    Manifest,
    SecretInfo,
    table_member,
)
from filewallball.backup.instance import Instance, NoProgress, Progress
from filewallball.backup.reader import ArchiveReader, Member
from filewallball.backup.rules import SecretAction, check_room, plan_secret
from filewallball.backup.snapshot import references
from filewallball.backup.target import key_exists, restore_tables, target_contents
from filewallball.backup.verify import ledger_errors, read_archive, scratch_dir
from filewallball.domain.errors import DependencyUnavailable
from filewallball.domain.models import Sha256
from filewallball.domain.ports import BlobStore
from filewallball.domain.security import IssuedKey
from filewallball.secret_file import install_secret, read_secret_file, remove_secret


@dataclass(frozen=True, slots=True)
class RestoreResult:
    manifest: Manifest
    secret: SecretAction
    stale_admin_key_file: Path | None  # removed: its key is not among the restored ones
    audit_error: str | None = None  # restored, but its audit entry is missing


async def restore_backup(
    path: Path,
    instance: Instance,
    *,
    allow_secret_mismatch: bool = False,
    progress: Progress | None = None,
) -> RestoreResult:
    """Restore the archive into `instance`, which must be empty (a first start's key aside).

    Blobs go through the blob store as they stream by (temp file, fsync, rename), each checked
    against its name first; the metadata is inserted in one transaction once the whole archive
    has been checked. The archive's server secret, when it is installed, is put in place just
    before that transaction commits, and put back as it was if the commit fails. After a
    failure the blobs this restore created are deleted again (never one that existed before).
    The restore's audit entry follows the commit.

    Only an archive of this version's schema revision is restored (check_revision).
    """
    progress = progress or NoProgress()
    engine, blobs = instance.engine, instance.blobs
    secret = SecretInfo.of(await instance.secret())
    if not await anyio.Path(path).is_file():
        raise BackupError(f"{path} does not exist or is not a file")
    progress.start("migrating the target database", total=None)
    await _migrate(instance.database_url)
    (await target_contents(engine)).check_empty()  # refuse before reading gigabytes
    await anyio.Path(instance.data_dir).mkdir(parents=True, exist_ok=True)
    # Fails early if blobs cannot be written, and creates the store's folders (its free space
    # can be told from then on).
    await blobs.check_writable()
    committed = False
    async with scratch_dir(instance.data_dir) as staging, ArchiveReader(path) as reader:
        with ledger_errors(staging):
            check = ArchiveCheck(staging)
        try:
            progress.start(f"restoring {path.name}", total=reader.total)
            action = SecretAction.KEEP

            def tick() -> None:
                progress.update(reader.position)

            async def on_header(header: Header) -> None:
                nonlocal action
                action = plan_secret(
                    header.secret,
                    keys=header.api_keys,
                    target=secret,
                    allow_mismatch=allow_secret_mismatch,
                )

            async def store_blob(member: Member) -> Digest:
                return await _store(blobs, member, tick, created=check.note_created)

            with ledger_errors(staging):
                manifest = await read_archive(
                    reader, check, store_blob=store_blob, tick=tick, on_header=on_header
                )
            progress.start("writing the metadata", total=None)
            swap = None
            if action is SecretAction.INSTALL:
                archived = check.secret()
                assert archived is not None  # required by the manifest for a file secret
                swap = _SecretSwap(instance.secret_file, archived)
            try:
                await restore_tables(
                    engine,
                    {table: check.path_of(table_member(table)) for table in TABLES},
                    before_commit=swap.install if swap is not None else None,
                )
                committed = True
            finally:
                if swap is not None and not committed:
                    with anyio.CancelScope(shield=True):
                        await swap.undo()
            audit_error = await instance.record(
                "backup.restore", target=path.name, detail=_restore_detail(manifest)
            )
            stale = await _stale_admin_key(engine, instance.admin_key_file)
            return RestoreResult(
                manifest=manifest,
                secret=action,
                stale_admin_key_file=stale,
                audit_error=audit_error,
            )
        except BaseException:
            if not committed:
                with anyio.CancelScope(shield=True):
                    await _remove_created(engine, blobs, _created_blobs(check))
            raise
        finally:
            check.close()


async def _migrate(database_url: str) -> None:
    try:
        await anyio.to_thread.run_sync(upgrade, database_url)
    except DependencyUnavailable as error:
        raise BackupError(f"migrating the target database failed: {error.diagnosis}") from error
    except (CommandError, SQLAlchemyError, OSError, TimeoutError) as error:
        raise BackupError(f"migrating the target database failed: {error}") from error


async def _store(
    blobs: BlobStore,
    member: Member,
    tick: Callable[[], None],
    *,
    created: Callable[[str], Awaitable[None]],
) -> Digest:
    """Write a blob member through the blob store; published only if it hashes to its name.

    Refused before a byte is written when its declared size (which bounds what is read of it)
    would leave the blob store with less than the margin free. `created` is told of a blob that
    was not in the store before this publish: a failed restore deletes those, and only those.
    """
    check_room(member.name, member.size, free=await blobs.free_bytes(), where="the blob store")
    digest = hashlib.sha256()

    async def hashed() -> AsyncIterator[bytes]:
        async for chunk in member.chunks():
            digest.update(chunk)
            tick()
            yield chunk

    staged = await blobs.stage(hashed())
    try:
        found = Digest(size=staged.size, sha256=digest.hexdigest())
        if found.sha256 == member.name.removeprefix(BLOB_PREFIX):
            sha = Sha256(found.sha256)
            # Published even when it exists (the same name: the same bytes, checked just now,
            # which also mends a copy gone bad), but then it is not this restore's to delete.
            existed = await blobs.exists(sha)
            with anyio.CancelScope(shield=True):  # published, so noted
                await staged.publish(sha)
                if not existed:
                    await created(sha)
        return found  # a mismatch is refused by the check, with the details
    finally:
        await staged.discard()


def _created_blobs(check: ArchiveCheck) -> list[str]:
    # Without the ledger nothing is known to be ours: then nothing is deleted.
    with contextlib.suppress(sqlite3.Error):
        return check.created_blobs()
    return []


async def _remove_created(engine: AsyncEngine, blobs: BlobStore, shas: list[str]) -> None:
    """Undo a failed restore's blobs: those it created that no file uses (none does here)."""
    for sha in shas:
        with contextlib.suppress(Exception):
            if await references(engine, sha) == 0:
                await blobs.delete(Sha256(sha))


def _restore_detail(manifest: Manifest) -> str:
    header = manifest.header
    return (
        f"archive of {header.created_at.isoformat()} from {header.source_backend} "
        f"(FileWallBall {header.app_version}): {manifest.rows['files']} files, "
        f"{manifest.blobs} blobs, {manifest.rows['api_keys']} keys"
    )


async def _stale_admin_key(engine: AsyncEngine, admin_key_file: Path) -> Path | None:
    """Remove <data_dir>/admin.key if the key it holds was replaced by the archive's keys."""
    try:
        text = await anyio.Path(admin_key_file).read_text()
    except FileNotFoundError:
        return None
    key_id = IssuedKey.key_id_of(text.strip())
    if key_id is not None and await key_exists(engine, key_id):
        return None
    await anyio.Path(admin_key_file).unlink(missing_ok=True)
    return admin_key_file


class _SecretSwap:
    """The archive's server secret put in place of the target's, and put back on failure.

    install() runs inside the restore's transaction, just before it commits: a crash between
    the two leaves the archive's secret and an empty database (restoring again then works,
    the secret already matching), never restored keys without their secret.
    """

    def __init__(self, path: Path, data: bytes) -> None:
        self._path = path
        self._data = data
        self._previous: bytes | None = None
        self._touched = False

    async def install(self) -> None:
        def install() -> None:
            self._previous = read_secret_file(self._path)
            # Before the rename: undo() must put the previous one back even if the directory's
            # fsync (after the rename) fails.
            self._touched = True
            install_secret(self._path, self._data)

        try:
            await anyio.to_thread.run_sync(install)
        except OSError as error:
            raise BackupError(
                f"installing the server secret as {self._path} failed: {error}"
            ) from error

    async def undo(self) -> None:
        """Put the target's own secret back (or none, if it had none); best effort."""

        def undo() -> None:
            if not self._touched:
                return
            if self._previous is None:
                remove_secret(self._path)
            else:
                install_secret(self._path, self._previous)

        # A secret left in place is the archive's, with an empty database: restoring again works.
        with contextlib.suppress(OSError):
            await anyio.to_thread.run_sync(undo)
