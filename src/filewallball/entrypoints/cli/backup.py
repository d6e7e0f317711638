"""`filewallball backup`: create, verify and restore archives of a whole instance.

Configured like the server (FWB_DATABASE_URL, FWB_DATA_DIR, FWB_SECRET_KEY, ...). Progress bars
go to stderr when it is a terminal; results to stdout; failures are `error: ...` and exit 1.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from filewallball.entrypoints.cli.startup import guarded, settings_or_exit
from filewallball.settings import Settings

if TYPE_CHECKING:
    from rich.progress import Progress as Bars
    from rich.progress import TaskID

    from filewallball.backup import Instance, Manifest

T = TypeVar("T")

backup = typer.Typer(
    help="Back up and restore the metadata and the blobs as one archive (docs/backup.md).",
    no_args_is_help=True,
)

Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Draw no progress bars.")]


class RichProgress:
    """Progress bars on stderr, one per phase; drawn only on a terminal."""

    def __init__(self, *, quiet: bool) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        console = Console(stderr=True)
        self._bars: Bars = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
            disable=quiet or not console.is_terminal,
        )
        self._task: TaskID | None = None

    def __enter__(self) -> RichProgress:
        self._bars.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if error is None:
            self._complete()
        self._bars.stop()

    def start(self, description: str, *, total: int | None) -> None:
        self._complete()
        self._task = self._bars.add_task(description, total=total)

    def update(self, completed: int) -> None:
        if self._task is not None:
            self._bars.update(self._task, completed=completed)

    def _complete(self) -> None:
        """Show the current phase as done (a phase without a total gets one)."""
        if self._task is None:
            return
        [task] = [t for t in self._bars.tasks if t.id == self._task]
        total = task.total if task.total is not None else task.completed
        self._bars.update(self._task, total=total, completed=total)


@backup.command("create")
def create(
    out: Annotated[
        Path,
        typer.Option(
            "--out", "-o", help="The archive to write: FILE.tar, or FILE.tar.gz to compress."
        ),
    ],
    skip_missing: Annotated[
        bool,
        typer.Option(
            "--skip-missing", help="Leave out files whose bytes are lost (listed), not fail."
        ),
    ] = False,
    quiet: Quiet = False,
) -> None:
    """Write a consistent archive of every file, key, IP rule and audit entry (while serving)."""
    from filewallball.backup import BackupResult, create_backup

    settings = _settings()

    async def work(instance: Instance) -> BackupResult:
        with RichProgress(quiet=quiet) as progress:
            return await create_backup(out, instance, skip_missing=skip_missing, progress=progress)

    result = _run(settings, work)
    if result.audit_error is not None:
        typer.echo(f"warning: the backup is not in the audit log: {result.audit_error}", err=True)
    for skipped in result.skipped:
        why = "deleted during the backup" if skipped.reason == "deleted" else "its bytes are lost"
        typer.echo(f"warning: left out file {skipped.file_id} ({why})", err=True)
    typer.echo(f"backup written to {result.path}: {_summary(result.manifest)}")


@backup.command("verify")
def verify(
    archive: Annotated[Path, typer.Argument(help="The archive to check.")],
    quiet: Quiet = False,
) -> None:
    """Re-read a whole archive and check every member against its manifest."""
    from filewallball.backup import verify_backup

    async def work() -> Manifest:
        with RichProgress(quiet=quiet) as progress:
            return await verify_backup(archive, progress=progress)

    manifest = guarded(lambda: asyncio.run(work()))
    typer.echo(f"{archive} is a sound FileWallBall backup: {_summary(manifest)}")


@backup.command("restore")
def restore(
    archive: Annotated[Path, typer.Argument(help="The archive to restore.")],
    allow_secret_mismatch: Annotated[
        bool,
        typer.Option(
            "--allow-secret-mismatch",
            help="Restore even though the restored API keys cannot authenticate here.",
        ),
    ] = False,
    quiet: Quiet = False,
) -> None:
    """Restore an archive into an empty instance (this one's database and data directory)."""
    from filewallball.backup import RestoreResult, SecretAction, restore_backup

    settings = _settings()

    async def work(instance: Instance) -> RestoreResult:
        with RichProgress(quiet=quiet) as progress:
            return await restore_backup(
                archive,
                instance,
                allow_secret_mismatch=allow_secret_mismatch,
                progress=progress,
            )

    result = _run(settings, work)
    if result.audit_error is not None:
        typer.echo(f"warning: the restore is not in the audit log: {result.audit_error}", err=True)
    if result.secret is SecretAction.INSTALL:
        typer.echo(f"installed the archive's server secret as {settings.secret_key_file}", err=True)
    elif result.secret is SecretAction.MISMATCH:
        typer.echo(
            "warning: the restored API keys do not authenticate here (another server secret); "
            "create new ones with `filewallball keys create`",
            err=True,
        )
    if result.stale_admin_key_file is not None:
        typer.echo(
            f"removed {result.stale_admin_key_file}: its key was replaced by the archive's keys",
            err=True,
        )
    typer.echo(f"restored {archive}: {_summary(result.manifest)}")
    typer.echo("restart the service so that every process sees the restored data", err=True)


def _run(settings: Settings, work: Callable[[Instance], Awaitable[T]]) -> T:
    """Run `work` with the adapters the server would use; errors become `error: ...`, exit 1."""
    from filewallball.backup import Instance
    from filewallball.container import build_container
    from filewallball.entrypoints.logs import configure_logging

    configure_logging("warning")
    # Audit entries written as they are recorded: a one-shot command runs no background writer.
    settings = settings.model_copy(update={"audit_flush_interval": 0})

    async def run() -> T:
        container = build_container(settings)
        blobs = container.blobs()
        instance = Instance(
            engine=container.engine(),
            blobs=blobs,
            audit=container.audit_log(),
            clock=container.clock(),
            database_url=settings.resolved_database_url,
            data_dir=settings.data_dir,
            secret_file=settings.secret_key_file,
            admin_key_file=settings.admin_key_file,
            secret_key=settings.secret_key,
        )
        try:
            return await work(instance)
        finally:
            # Only the engine and the blob store (its S3 client) were opened: no Redis, no queue
            # (a backup pod may not reach them).
            await container.engine().dispose()
            await blobs.aclose()

    return guarded(lambda: asyncio.run(run()), settings=settings)


def _settings() -> Settings:
    return settings_or_exit()


def _summary(manifest: Manifest) -> str:
    rows, header = manifest.rows, manifest.header
    return (
        f"{rows['files']} files, {manifest.blobs} blobs ({manifest.blob_bytes} bytes), "
        f"{rows['api_keys']} API keys, {rows['ip_rules']} IP rules, "
        f"{rows['audit_log']} audit entries; schema {header.schema_revision}, "
        f"from {header.source_backend}, taken {header.created_at.isoformat()}"
    )
