"""Housekeeping jobs: purge expired and trashed files, sweep leftovers, scrub stored bytes."""

from __future__ import annotations

import logging

from filewallball.domain.jobs import JobPayload, JobRegistry
from filewallball.domain.resumable import ResumableService
from filewallball.domain.services import FileService

MAINTENANCE_JOB = "maintenance"
SCRUB_JOB = "scrub"

_log = logging.getLogger("filewallball.maintenance")


def register_maintenance_jobs(
    registry: JobRegistry,
    *,
    files: FileService,
    resumable: ResumableService,
    temp_max_age_seconds: float,
) -> None:
    """Both jobs are idempotent: running one twice, or on two replicas at once, is harmless."""

    async def maintenance(_: JobPayload) -> None:
        purged = await files.purge()
        swept, collected = await files.recover(temp_older_than_seconds=temp_max_age_seconds)
        expired, orphans = await resumable.purge(stale_after_seconds=temp_max_age_seconds)
        _log.info(
            "maintenance_done",
            extra={
                "purged": purged,
                "uploads_expired": expired,
                "upload_leftovers_removed": orphans,
                "temp_files_removed": swept,
                "orphan_blobs_removed": collected,
            },
        )

    async def scrub(_: JobPayload) -> None:
        corrupt = await files.scrub()
        _log.info("scrub_done", extra={"corrupt": len(corrupt)})

    registry.register(MAINTENANCE_JOB, maintenance)
    registry.register(SCRUB_JOB, scrub)
