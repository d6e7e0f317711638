"""The dependency checks: one set, run by /readyz and in the background for the metrics.

Each check records its result in `filewallball_dependency_up`, so the gauge has a value from
the start and keeps moving when nothing calls /readyz (a plain Prometheus, no Kubernetes).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from filewallball.container import Container
from filewallball.domain.errors import DependencyUnavailable, FileWallBallError
from filewallball.entrypoints.http.schemas import Check
from filewallball.settings import Settings

CHECK_TIMEOUT_SECONDS = 2.0
# How often the background checks run (and once at start): within a scrape interval or so.
BACKGROUND_INTERVAL_SECONDS = 15.0

log = structlog.get_logger("filewallball")


@dataclass(frozen=True, slots=True)
class Probe:
    check: Callable[[], Awaitable[None]]
    required: bool  # a failing required dependency makes the process not ready
    # Where it is sought, for a check that does not answer in time (its own diagnosis says
    # where, but a timed-out check has none): "S3 bucket 'b' at http://s3:9000".
    where: str | None = None


def probes(root: Container) -> dict[str, Probe]:
    """The dependencies this configuration has, by the name the metrics and /readyz use."""
    settings = root.settings()
    blobs = root.blobs()

    async def blob_storage() -> None:
        await blobs.check_writable()
        free = await blobs.free_bytes()
        if free is not None and free < settings.min_free_bytes:
            raise DependencyUnavailable(
                "blob storage",
                f"{free} bytes free, below FWB_MIN_FREE_BYTES={settings.min_free_bytes}",
            )

    found = {
        "database": Probe(root.files().ping, required=True),
        "blob_storage": Probe(blob_storage, required=True, where=_blob_storage_at(settings)),
    }
    if settings.redis_url:
        # The service serves from the database while Redis is down: degraded, still ready.
        found["redis"] = Probe(root.cache().ping, required=False)
    if settings.clamd_address:
        # Uploads fail closed without clamd, unless the operator chose to let them in.
        found["clamd"] = Probe(root.scanner().ping, required=not settings.scan_fail_open)
    return found


def _blob_storage_at(settings: Settings) -> str:
    if settings.s3_bucket is None:
        return f"blob storage at {settings.blob_dir}"
    from filewallball.adapters.s3 import S3Location

    return S3Location(**settings.s3_location_args()).describe()


async def check_all(root: Container) -> dict[str, Check]:
    """Every dependency checked at once, each within CHECK_TIMEOUT_SECONDS; the gauge updated."""
    found = probes(root)
    results = await asyncio.gather(*(_check(p) for p in found.values()))
    checks = dict(zip(found, results, strict=True))
    for name, check in checks.items():
        root.observe_dependency()(name, check.status == "ok")
    return checks


async def check_periodically(
    root: Container, interval: float = BACKGROUND_INTERVAL_SECONDS
) -> None:
    """check_all every `interval` seconds, until cancelled."""
    while True:
        await asyncio.sleep(interval)
        try:
            await check_all(root)
        except Exception:  # the next round tries again; the task must not die
            log.exception("dependency_checks_failed")


async def _check(probe: Probe) -> Check:
    started = time.perf_counter()
    status, detail = "ok", None
    try:
        await asyncio.wait_for(probe.check(), CHECK_TIMEOUT_SECONDS)
    except DependencyUnavailable as error:
        status, detail = "failing", error.diagnosis  # where it was sought, and why it failed
    except TimeoutError:
        # S3 retries a refused connection with backoff past the deadline, and an endpoint that
        # drops packets never answers: then only the probe can say where it was sought.
        where = f"{probe.where}: " if probe.where else ""
        status, detail = "failing", f"{where}no answer within {CHECK_TIMEOUT_SECONDS:g} s"
    except (FileWallBallError, OSError) as error:
        status, detail = "failing", str(error) or type(error).__name__
    latency = round((time.perf_counter() - started) * 1000, 3)
    return Check(status=status, required=probe.required, latency_ms=latency, detail=detail)
