"""Prometheus business metrics (prefix filewallball_), fed by decorators around the ports.

Counters come from what the service already records: every audit entry, every job run (cache
lookups are counted by the cache itself, adapters.redis.cache). Gauges that need a query are
refreshed when /metrics is scraped. With several workers, prometheus_client's multiprocess
mode (entrypoints/metrics_folder.py) adds the processes' values up.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from filewallball.domain.jobs import JobHandler, JobPayload, JobRegistry
from filewallball.domain.ports import AuditLog, StorageTotals
from filewallball.domain.security import AuditEntry, AuditQuery

UPLOADS = Counter(
    "filewallball_uploads_total", "Uploads by outcome and reason", ["outcome", "reason"]
)
DOWNLOADS = Counter("filewallball_downloads_total", "Downloads started")
DENIED = Counter("filewallball_denied_requests_total", "Requests refused (401/403/429)", ["reason"])
RATE_LIMITED = Counter("filewallball_rate_limited_requests_total", "Requests answered 429")
MALWARE = Counter("filewallball_malware_detected_total", "Uploads refused as malware")
QUOTA = Counter("filewallball_quota_rejections_total", "Uploads refused over a quota")
CACHE = Counter("filewallball_cache_requests_total", "Cache lookups", ["cache", "result"])
# Resumable (tus) uploads: created, completed (became a file), terminated, expired unfinished.
RESUMABLE = Counter(
    "filewallball_resumable_uploads_total", "Resumable (tus) uploads by event", ["event"]
)
_RESUMABLE_EVENTS = {
    "upload.create": "created",
    "upload.complete": "completed",
    "upload.terminate": "terminated",
    "upload.expire": "expired",
}
NEAR_SYNCS = Counter(
    "filewallball_near_cache_syncs_total",
    "Round trips that brought the process's copies of cached entries up to date",
    ["outcome"],
)
# `task`, not `job`: Prometheus gives every scraped sample the target's `job` label, and
# renames a `job` label of the metric's own to `exported_job`.
JOBS = Counter("filewallball_job_runs_total", "Background job runs", ["task", "outcome"])
JOB_SECONDS = Histogram("filewallball_job_duration_seconds", "Background job run time", ["task"])
STORED_FILES = Gauge("filewallball_stored_files", "Files stored", multiprocess_mode="mostrecent")
STORED_BYTES = Gauge(
    "filewallball_stored_bytes",
    "Bytes stored: logical (per file) and physical (deduplicated)",
    ["kind"],
    multiprocess_mode="mostrecent",
)
DEPENDENCY_UP = Gauge(
    "filewallball_dependency_up",
    "1 when the dependency answered its last check",
    ["dependency"],
    multiprocess_mode="mostrecent",
)
DISK_FREE = Gauge(
    "filewallball_blob_volume_free_bytes",
    "Free bytes on the blob volume",
    multiprocess_mode="mostrecent",
)


class CountingAuditLog(AuditLog):
    """An AuditLog that also counts what it records."""

    def __init__(self, inner: AuditLog) -> None:
        self._inner = inner

    async def record(self, entry: AuditEntry) -> None:
        count(entry)
        await self._inner.record(entry)

    async def query(self, query: AuditQuery) -> list[AuditEntry]:
        return await self._inner.query(query)

    async def flush(self) -> None:
        await self._inner.flush()

    async def aclose(self) -> None:
        await self._inner.aclose()


def count(entry: AuditEntry) -> None:
    if entry.action == "file.upload":
        UPLOADS.labels(entry.outcome.value, entry.detail or "none").inc()
        if entry.detail == "quota_exceeded":
            QUOTA.inc()
    elif entry.action == "file.download":
        DOWNLOADS.inc()
    elif entry.action in _RESUMABLE_EVENTS:
        RESUMABLE.labels(_RESUMABLE_EVENTS[entry.action]).inc()
    elif entry.action == "malware.detected":
        MALWARE.inc()
    elif entry.action == "request.denied":
        DENIED.labels(entry.detail or "unknown").inc()
        if entry.detail == "rate_limited":
            RATE_LIMITED.inc()


class InstrumentedJobRegistry(JobRegistry):
    """A JobRegistry whose handlers count their runs, failures and time."""

    def register(self, name: str, handler: JobHandler) -> None:
        super().register(name, _timed(name, handler))


def _timed(name: str, handler: JobHandler) -> JobHandler:
    async def run(payload: JobPayload) -> None:
        started = time.perf_counter()
        try:
            await handler(payload)
        except Exception:
            JOBS.labels(name, "failure").inc()
            raise
        else:
            JOBS.labels(name, "success").inc()
        finally:
            JOB_SECONDS.labels(name).observe(time.perf_counter() - started)

    return run


def set_storage(totals: StorageTotals, free_bytes: int) -> None:
    STORED_FILES.set(totals.files)
    STORED_BYTES.labels("logical").set(totals.logical_bytes)
    STORED_BYTES.labels("stored").set(totals.stored_bytes)
    DISK_FREE.set(free_bytes)


def set_dependency(name: str, up: bool) -> None:
    DEPENDENCY_UP.labels(name).set(1 if up else 0)


def serve_metrics(host: str, port: int) -> Callable[[], None]:
    """This process's metrics over HTTP (GET /metrics) from a thread; the function that stops it.

    For processes that serve no HTTP of their own (`filewallball worker`). OSError when the
    address cannot be bound.
    """
    server, thread = start_http_server(port, addr=host)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return stop
