"""What a backup reads and a restore fills: one instance's database, blobs, audit log and secret."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import anyio.to_thread
from sqlalchemy.ext.asyncio import AsyncEngine

from filewallball.domain.access import Auditor
from filewallball.domain.errors import FileWallBallError
from filewallball.domain.ports import AuditLog, BlobStore, Clock
from filewallball.domain.security import Outcome, Principal
from filewallball.secret_file import FoundSecret, find_secret

# The backup tool's audit entries are an operator's, like those of `filewallball keys`.
_ACTOR = Principal.system("backup")


class Progress(Protocol):
    """Where long operations report how far they are (the CLI draws bars)."""

    def start(self, description: str, *, total: int | None) -> None: ...

    def update(self, completed: int) -> None: ...


class NoProgress(Progress):
    def start(self, description: str, *, total: int | None) -> None:
        pass

    def update(self, completed: int) -> None:
        pass


@dataclass(frozen=True, slots=True, kw_only=True)
class Instance:
    """The adapters the server would use, and where its data directory keeps its files."""

    engine: AsyncEngine  # backups copy whole tables: SQL, not the repositories
    blobs: BlobStore
    audit: AuditLog
    clock: Clock
    database_url: str  # what a restore migrates
    data_dir: Path
    secret_file: Path  # <data_dir>/secret.key
    admin_key_file: Path  # <data_dir>/admin.key
    secret_key: str | None = None  # FWB_SECRET_KEY

    async def secret(self) -> FoundSecret:
        """Where this instance's server secret comes from (never creating one)."""
        return await anyio.to_thread.run_sync(
            lambda: find_secret(self.secret_file, env_value=self.secret_key)
        )

    async def record(
        self, action: str, *, target: str, detail: str, size: int | None = None
    ) -> str | None:
        """Write an audit entry of the backup tool at once; why it failed, or None.

        A failure is reported, not raised: it comes after the work it records is done, and
        that work (an archive written, a restore committed) stands.
        """
        auditor = Auditor(log=self.audit, clock=self.clock)
        try:
            await auditor.record(
                _ACTOR, action, Outcome.SUCCESS, target=target[:255], detail=detail, size=size
            )
            # A one-shot command ends right after: nothing may wait in a buffer.
            await self.audit.flush()
        except FileWallBallError as error:
            return f"writing the audit entry failed: {error.__cause__ or error.detail}"
        return None
