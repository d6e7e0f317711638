"""Check an archive (verify) and restore it into an empty instance.

Both read the archive once, as a stream, through the same checks (adapters/backup_check.py);
a restore writes the blobs through the blob store as they pass and commits the metadata in one
transaction at the end, so it leaves all of the archive or none of it. After a failure it
deletes only the blobs it created: a blob file that was on the target's volume before (a lost
database, a surviving data volume) is never removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.to_thread
from alembic.util import CommandError
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from filewallball.adapters.disk import fsync_dir
from filewallball.adapters.sql import upgrade
from filewallball.backup.check import ArchiveCheck
from filewallball.backup.create import NoProgress, Progress
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
from filewallball.backup.reader import ArchiveReader, Member
from filewallball.backup.rules import SecretAction, check_room, plan_secret
from filewallball.backup.snapshot import references
from filewallball.backup.target import audit_row, key_exists, restore_tables, target_contents
from filewallball.backup.verify import ledger_errors, read_archive, scratch_dir
from filewallball.domain.models import Sha256
from filewallball.domain.ports import BlobStore
from filewallball.domain.security import IssuedKey


@dataclass(frozen=True, slots=True)
class RestoreResult:
    manifest: Manifest
    secret: SecretAction
    stale_admin_key_file: Path | None  # removed: its key is not among the restored ones


async def restore_backup(
    path: Path,
    *,
    engine: AsyncEngine,
    database_url: str,
    blobs: BlobStore,
    data_dir: Path,
    secret: SecretInfo,
    secret_file: Path,
    admin_key_file: Path,
    allow_secret_mismatch: bool = False,
    progress: Progress | None = None,
) -> RestoreResult:
    """Restore the archive into an empty instance: all of it, or (on any error) none of it.

    Blobs go through the blob store as they stream by (temp file, fsync, rename), each checked
    against its name first; the metadata is inserted in one transaction once the whole archive
    has been checked. The archive's server secret, when it is installed, is put in place just
    before that transaction commits, and put back as it was if the commit fails. After a
    failure the blobs this restore created are deleted again (never one that existed before).

    Only an archive of this version's schema revision is restored (check_revision).
    """
    progress = progress or NoProgress()
    if not await anyio.Path(path).is_file():
        raise BackupError(f"{path} does not exist or is not a file")
    progress.start("migrating the target database", total=None)
    await _migrate(database_url)
    (await target_contents(engine)).check_empty()  # refuse before reading gigabytes
    await anyio.Path(data_dir).mkdir(parents=True, exist_ok=True)
    # Fails early if blobs cannot be written, and creates the store's folders (its free space
    # can be told from then on).
    await blobs.check_writable()
    committed = False
    async with scratch_dir(data_dir) as staging, ArchiveReader(path) as reader:
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
                swap = _SecretSwap(secret_file, archived)
            try:
                await restore_tables(
                    engine,
                    {table: check.path_of(table_member(table)) for table in TABLES},
                    audit=_restore_audit(path, manifest),
                    before_commit=swap.install if swap is not None else None,
                )
                committed = True
            finally:
                if swap is not None and not committed:
                    with anyio.CancelScope(shield=True):
                        await swap.undo()
            stale = await _stale_admin_key(engine, admin_key_file)
            return RestoreResult(manifest=manifest, secret=action, stale_admin_key_file=stale)
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


def _restore_audit(path: Path, manifest: Manifest) -> dict[str, object]:
    header = manifest.header
    return audit_row(
        "backup.restore",
        target=path.name,
        detail=(
            f"archive of {header.created_at.isoformat()} from {header.source_backend} "
            f"(FileWallBall {header.app_version}): {manifest.rows['files']} files, "
            f"{manifest.blobs} blobs, {manifest.rows['api_keys']} keys"
        ),
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

    def __init__(self, final: Path, data: bytes) -> None:
        self._final = final
        self._data = data
        self._previous: bytes | None = None
        self._installed = False

    async def install(self) -> None:
        def install() -> None:
            try:
                self._previous = self._final.read_bytes()
            except FileNotFoundError:
                self._previous = None
            temp = _prepare_private(self._final, self._data)
            os.replace(temp, self._final)
            self._installed = True
            fsync_dir(self._final.parent)

        try:
            await anyio.to_thread.run_sync(install)
        except OSError as error:
            raise BackupError(
                f"installing the server secret as {self._final} failed: {error}"
            ) from error

    async def undo(self) -> None:
        """Put the target's own secret back (or none, if it had none); best effort."""

        def undo() -> None:
            _temp_of(self._final).unlink(missing_ok=True)
            if not self._installed:
                return
            if self._previous is None:
                self._final.unlink(missing_ok=True)
                fsync_dir(self._final.parent)
            else:
                _install(_prepare_private(self._final, self._previous), self._final)

        # A secret left in place is the archive's, with an empty database: restoring again works.
        with contextlib.suppress(OSError):
            await anyio.to_thread.run_sync(undo)


def _prepare_private(final: Path, data: bytes) -> Path:
    """`data` in a fsynced 0600 temp file beside `final`, ready for _install."""
    temp = _temp_of(final)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return temp


def _temp_of(final: Path) -> Path:
    return final.with_name(f".{final.name}.restore")


def _install(temp: Path, final: Path) -> None:
    os.replace(temp, final)
    fsync_dir(final.parent)
