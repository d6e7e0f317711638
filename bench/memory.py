"""Scenarios d and f: one large streamed upload while the server's RSS is sampled every 50 ms."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import httpx
import psutil  # type: ignore[import-untyped]

from bench import MiB
from bench.procs import BenchError
from bench.targets import Ours

SAMPLE_SECONDS = 0.05


@dataclass
class MemoryResult:
    status: int
    size: int
    seconds: float
    mb_per_s: float
    # Peak of the sum of every server process's RSS minus the sum before: the target's figure.
    rss_growth_total_mib: float
    # The largest growth of a single process: the worker that handled the upload.
    rss_growth_worker_mib: float
    baseline_total_mib: float
    peak_total_mib: float
    samples: int
    # S3: the growth of the S3 server's RSS (SeaweedFS), beside the target's, not in it.
    storage_rss_growth_mib: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _rss(process: psutil.Process) -> int:
    try:
        return int(process.memory_info().rss)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0


def body(size: int, chunk: int = MiB) -> Iterator[bytes]:
    """`size` bytes in `chunk`-sized pieces, never held at once; unique, so nothing is
    deduplicated."""
    block = bytearray(os.urandom(chunk))
    sent = 0
    while sent < size:
        block[:16] = os.urandom(16)
        piece = bytes(block[: min(chunk, size - sent)])
        sent += len(piece)
        yield piece


# Sends `size` bytes of `body` to a FileWallBall its own way; the last status, and the id of
# the file stored (None if none was).
Send = Callable[[httpx.Client, int], tuple[int, str | None]]


def put_upload(client: httpx.Client, size: int) -> tuple[int, str | None]:
    """PUT /upload/<name> (Content-Length, streamed)."""
    response = client.put(
        f"/upload/bench-memory-{os.urandom(4).hex()}.bin",
        content=body(size),
        headers={"content-length": str(size), "content-type": "application/octet-stream"},
    )
    return response.status_code, response.json()["id"] if response.status_code == 201 else None


def streamed_upload(
    ours: Ours,
    size: int,
    *,
    storage: list[psutil.Process] | None = None,
    send: Send = put_upload,
) -> MemoryResult:
    """One upload of `size` bytes (PUT /upload/<name> unless `send` says otherwise), sampling
    RSS meanwhile: of the server's processes, and of `storage` (the S3 server) apart."""
    processes = ours.managed.tree()
    if not processes:
        raise BenchError("the FileWallBall server is not running")
    baseline = {p.pid: _rss(p) for p in processes}
    peaks = dict(baseline)
    peak_total = sum(baseline.values())
    storage = storage or []
    storage_baseline = sum(_rss(p) for p in storage)
    storage_peak = storage_baseline
    samples = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak_total, storage_peak, samples
        while not done.is_set():
            current = {p.pid: _rss(p) for p in processes}
            for pid, rss in current.items():
                peaks[pid] = max(peaks[pid], rss)
            peak_total = max(peak_total, sum(current.values()))
            storage_peak = max(storage_peak, sum(_rss(p) for p in storage))
            samples += 1
            time.sleep(SAMPLE_SECONDS)

    sampler = threading.Thread(target=sample, name="rss-sampler", daemon=True)
    sampler.start()
    started = time.perf_counter()
    try:
        with ours.client(timeout=600) as client:
            status, file_id = send(client, size)
    finally:
        seconds = time.perf_counter() - started
        done.set()
        sampler.join()
    if file_id is not None:
        # Give the space back at once: later rounds upload another one.
        with ours.client() as client:
            client.delete(f"/files/{file_id}")
    return MemoryResult(
        status=status,
        size=size,
        seconds=round(seconds, 3),
        mb_per_s=round(size / seconds / 1e6, 2),
        rss_growth_total_mib=round((peak_total - sum(baseline.values())) / MiB, 2),
        rss_growth_worker_mib=round(max(peaks[pid] - baseline[pid] for pid in baseline) / MiB, 2),
        baseline_total_mib=round(sum(baseline.values()) / MiB, 2),
        peak_total_mib=round(peak_total / MiB, 2),
        samples=samples,
        storage_rss_growth_mib=(
            round((storage_peak - storage_baseline) / MiB, 2) if storage else None
        ),
    )
