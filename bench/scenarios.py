"""The scenarios of issue 7 and the order they run in: rounds, each pair alternating its order."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]
from rich.console import Console

from bench import GiB, KiB, MiB, ceiling, size_label
from bench.memory import MemoryResult, streamed_upload
from bench.procs import BenchError, Managed
from bench.resumable import multipart_post, tus_upload
from bench.storage import DISK
from bench.targets import Nginx, Ours
from bench.wrk import Load, WrkResult, run_wrk

SCENARIOS = {
    "a": "GET /files/{id}: a file record (cached metadata) with a valid key",
    "b": "GET /download/{id}: whole files, against nginx serving the same bytes statically",
    "c": "concurrent uploads: PUT /upload/{name} against nginx's WebDAV PUT",
    "d": "one large streamed upload: the server's peak RSS growth",
    "e": "a bare FastAPI JSON route on the same server settings: the framework ceiling",
    "f": "one large resumable upload: tus PATCHes against POST /upload of the same size",
}


@dataclass(frozen=True)
class Plan:
    """Everything that decides the load; recorded in the JSON."""

    rounds: int
    duration: float
    warmup: float
    pause: float
    threads: int
    connections: int  # a, e, and downloads below LARGE_DOWNLOAD
    large_connections: int  # downloads of LARGE_DOWNLOAD and more
    upload_connections: int
    download_sizes: tuple[int, ...]
    upload_sizes: tuple[int, ...]
    memory_size: int
    resumable_size: int  # f: the file
    resumable_patch_bytes: int  # f: what each PATCH carries
    scenarios: frozenset[str]
    timeout: float = 60  # wrk's per-request timeout: a late answer counts as an error
    storages: tuple[str, ...] = (DISK,)  # one FileWallBall per storage, measured side by side


LARGE_DOWNLOAD = 64 * MiB  # and larger: fewer connections (large_connections)
LONG_UPLOAD = 4 * MiB  # and larger: runs three times as long
FULL_SIZES: dict[str, Any] = {
    "download_sizes": (KiB, MiB, 100 * MiB),
    "upload_sizes": (MiB, 10 * MiB),
    "memory_size": GiB,
    # Four PATCHes, each one of the disk store's 64 MiB segments (eight of S3's 8 MiB ones).
    "resumable_size": 256 * MiB,
    "resumable_patch_bytes": 64 * MiB,
}
SMOKE_SIZES: dict[str, Any] = {
    "download_sizes": (KiB, 64 * KiB, MiB),
    "upload_sizes": (16 * KiB, 256 * KiB),
    "memory_size": 32 * MiB,
    "resumable_size": 4 * MiB,
    "resumable_patch_bytes": MiB,
}


@dataclass
class Measurement:
    scenario: str
    case: str
    target: str  # "ours", "nginx", "ceiling", BEHIND_NGINX, or "ours-s3"...: targets.py
    round: int
    result: WrkResult | MemoryResult
    storage: str | None = None  # where the blobs were: FileWallBall's runs only

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "case": self.case,
            "target": self.target,
            "storage": self.storage,
            "round": self.round,
            **self.result.to_json(),
        }


@dataclass(frozen=True)
class Case:
    """One figure's worth of runs: a load per target, run as an alternating pair."""

    id: str
    scenario: str
    loads: dict[str, Load]
    after: Callable[[str], None] | None = None  # called with the target after its run

    def label(self, target: str) -> tuple[str, str]:
        """The scenario and case a target's runs count for: the ceiling is scenario e."""
        return ("e", "e") if target == "ceiling" else (self.scenario, self.id)


@dataclass
class Bench:
    plan: Plan
    wrk: str
    ours: list[Ours]  # one FileWallBall per storage, in the plan's order
    nginx: Nginx | None
    ceiling: tuple[str, Managed] | None  # its URL and process
    work: Path
    console: Console
    measurements: list[Measurement] = field(default_factory=list)
    # By FileWallBall target: size -> file id, and the sha256 of the files downloads read.
    downloads: dict[str, dict[int, str]] = field(default_factory=dict)
    kept_blobs: dict[str, set[str]] = field(default_factory=dict)
    nginx_downloads: dict[int, str] = field(default_factory=dict)  # size -> name under /download/

    def serving(self, target: str) -> Ours | None:
        """The FileWallBall a target's requests reach (directly or behind nginx)."""
        return next((o for o in self.ours if target in (o.target, o.behind_nginx)), None)

    # --- preparation --------------------------------------------------------------------

    def prepare_downloads(self) -> None:
        """Upload each download size once through the API of every FileWallBall (the same
        bytes to each); nginx gets them too, under the first one's file id."""
        if not self.ours:
            raise BenchError("scenarios a and b need FileWallBall")
        # Scenario a reads the record of the 1 KiB file.
        sizes = sorted({*self.plan.download_sizes, KiB} if "b" in self.plan.scenarios else {KiB})
        source = self.work / "download-source.bin"
        for size in sizes:
            with source.open("wb") as out:
                left = size
                while left:
                    out.write(os.urandom(min(MiB, left)))
                    left -= min(MiB, left)
            for ours in self.ours:
                file_id = self._pre_upload(ours, source, size)
                if self.nginx and size not in self.nginx_downloads:
                    shutil.copyfile(source, self.nginx.download_dir / file_id)
                    self.nginx_downloads[size] = file_id
        source.unlink()

    def _pre_upload(self, ours: Ours, source: Path, size: int) -> str:
        with ours.client(timeout=600) as client:
            with source.open("rb") as body:
                response = client.put(f"/upload/download-{size_label(size)}.bin", content=body)
            if response.status_code != 201:
                raise BenchError(
                    f"pre-upload to {ours.target} failed: {response.status_code} {response.text}"
                )
            file_id = str(response.json()["id"])
            self.kept_blobs.setdefault(ours.target, set()).add(str(response.json()["sha256"]))
            self.downloads.setdefault(ours.target, {})[size] = file_id
            # The first read fills the metadata cache (scenario a reads this record).
            client.get(f"/files/{file_id}").raise_for_status()
        return file_id

    def upload_body(self, size: int) -> Path:
        path = self.work / f"upload-{size_label(size)}.bin"
        if not path.exists():
            path.write_bytes(os.urandom(size))
        return path

    # --- the cases ----------------------------------------------------------------------

    def _load(self, url: str, **fields: Any) -> Load:
        return Load(
            **{"threads": self.plan.threads, "duration": self.plan.duration, **fields}, url=url
        )

    def cases(self) -> list[Case]:
        plan, nginx = self.plan, self.nginx
        cases: list[Case] = []
        small = {"connections": plan.connections, "timeout": plan.timeout}
        if "a" in plan.scenarios or "e" in plan.scenarios:
            loads: dict[str, Load] = {}
            for ours in self.ours if "a" in plan.scenarios else []:
                path = f"/files/{self.downloads[ours.target][KiB]}"
                loads[ours.target] = self._load(
                    ours.url, path=path, authorization=ours.authorization, **small
                )
            if "e" in plan.scenarios and self.ceiling:
                loads["ceiling"] = self._load(self.ceiling[0], path=ceiling.PATH, **small)
            cases.append(Case("a", "a", loads))
        if "b" in plan.scenarios and self.ours and nginx:
            for size in plan.download_sizes:
                many = plan.large_connections if size >= LARGE_DOWNLOAD else plan.connections
                common: dict[str, Any] = {
                    "body_size": size,
                    "connections": many,
                    "timeout": plan.timeout,
                }
                loads = {}
                for ours in self.ours:
                    path = f"/download/{self.downloads[ours.target][size]}"
                    auth = ours.authorization
                    loads[ours.target] = self._load(
                        ours.url, path=path, authorization=auth, **common
                    )
                path = f"/download/{self.nginx_downloads[size]}"
                loads["nginx"] = self._load(nginx.url, path=path, **common)
                for ours in self.ours if size == max(plan.download_sizes) else []:
                    # The same requests to FileWallBall behind nginx, which sends the file (on
                    # disk; from S3 FileWallBall streams it, and nginx passes it on).
                    front = nginx.front_urls.get(ours.behind_nginx)
                    if front:
                        path = f"/download/{self.downloads[ours.target][size]}"
                        auth = ours.authorization
                        loads[ours.behind_nginx] = self._load(
                            front, path=path, authorization=auth, **common
                        )
                cases.append(Case(f"b-{size_label(size)}", "b", loads))
        if "c" in plan.scenarios and self.ours and nginx:
            for size in plan.upload_sizes:
                # 100 uploads of 10 MiB take seconds each: longer runs, so that every
                # connection completes several and the cut-off at the end weighs little.
                long = size >= LONG_UPLOAD
                common = {
                    "duration": plan.duration * 3 if long else plan.duration,
                    "body_file": self.upload_body(size),
                    "body_size": size,
                    "connections": plan.upload_connections,
                    "timeout": plan.timeout,
                }
                loads = {
                    ours.target: self._load(
                        ours.url,
                        path_prefix="/upload/bench-",
                        authorization=ours.authorization,
                        **common,
                    )
                    for ours in self.ours
                }
                loads["nginx"] = self._load(nginx.url, path_prefix="/put/", **common)
                cases.append(Case(f"c-{size_label(size)}", "c", loads, after=self._after_upload))
        return cases

    def _after_upload(self, target: str) -> None:
        """Write back the dirty pages now, outside any measured run, and free the space.

        A run of 10 MiB uploads stores gigabytes. nginx's folder is emptied; FileWallBall's
        uploads are never read again, so their blobs are deleted from its blob folder or its
        bucket (their records stay until the database is dropped at the end).
        """
        ours = self.serving(target)
        if ours and ours.bucket:
            # Before the sync: SeaweedFS reclaims the space by rewriting its volume files.
            ours.bucket.remove_blobs(keep=self.kept_blobs.get(ours.target, set()))
        os.sync()
        if target == "nginx" and self.nginx:
            # Uploads cut off by wrk's end may still land: nginx re-creates the folder then.
            shutil.rmtree(self.nginx.put_dir, ignore_errors=True)
            self.nginx.put_dir.mkdir(exist_ok=True)
        if ours and not ours.bucket:
            kept = self.kept_blobs.get(ours.target, set())
            for blob in ours.blob_dir.glob("[0-9a-f][0-9a-f]/[0-9a-f][0-9a-f]/*"):
                if blob.name not in kept:
                    blob.unlink(missing_ok=True)

    # --- running ------------------------------------------------------------------------

    def _server(self, target: str) -> Managed | None:
        ours = self.serving(target)
        if ours:  # behind nginx: FileWallBall's CPU
            return ours.managed
        if target == "nginx" and self.nginx:
            return self.nginx.managed
        return self.ceiling[1] if target == "ceiling" and self.ceiling else None

    def _storage(self, target: str) -> list[psutil.Process]:
        """The S3 server's process behind a target, if its blobs are in a bucket."""
        ours = self.serving(target)
        return ours.bucket.processes() if ours and ours.bucket else []

    def run_load(self, case: Case, target: str) -> WrkResult:
        server = self._server(target)
        processes = server.tree() if server else []
        storage = self._storage(target)
        before, storage_before = _cpu_seconds(processes), _cpu_seconds(storage)
        result = run_wrk(self.wrk, case.loads[target])
        if processes and result.requests:
            spent = _cpu_seconds(processes) - before
            result.server_cpu_ms_per_request = round(spent * 1000 / result.requests, 4)
        if storage and result.requests:
            spent = _cpu_seconds(storage) - storage_before
            result.storage_cpu_ms_per_request = round(spent * 1000 / result.requests, 4)
        if case.after:
            case.after(target)
        return result

    def warm_up(self, cases: list[Case]) -> None:
        if self.plan.warmup <= 0:
            return
        self.console.print(f"[dim]warm-up: {self.plan.warmup:g} s per case and target[/]")
        for case in cases:
            for target, load in case.loads.items():
                warm = Load(**{**load.__dict__, "duration": self.plan.warmup})
                run_wrk(self.wrk, warm)
                if case.after:
                    case.after(target)

    def run(self) -> list[Measurement]:
        cases = self.cases()
        self.warm_up(cases)
        for number in range(1, self.plan.rounds + 1):
            for case in cases:
                targets = list(case.loads)
                if number % 2 == 0:
                    targets.reverse()  # alternate who goes first: no order advantage
                for target in targets:
                    result = self.run_load(case, target)
                    self.record(self._measurement(case, target, number, result))
                    time.sleep(self.plan.pause)
        return self.measurements

    def _measurement(
        self, case: Case, target: str, number: int, result: WrkResult | MemoryResult
    ) -> Measurement:
        scenario, case_id = case.label(target)
        ours = self.serving(target)
        return Measurement(
            scenario, case_id, target, number, result, storage=ours.storage if ours else None
        )

    def run_memory(self) -> None:
        """Scenario d, every round, first of all: before other work has grown the workers'
        heaps, so that memory freed by earlier requests cannot hide the upload's growth.
        One upload per FileWallBall a round, who goes first alternating like the pairs."""
        if "d" not in self.plan.scenarios or not self.ours:
            return
        case = Case(f"d-{size_label(self.plan.memory_size)}", "d", {})
        for number in range(1, self.plan.rounds + 1):
            order = self.ours if number % 2 else list(reversed(self.ours))
            for ours in order:
                storage = ours.bucket.processes() if ours.bucket else []
                memory = streamed_upload(ours, self.plan.memory_size, storage=storage)
                if ours.bucket:
                    ours.bucket.remove_blobs(keep=self.kept_blobs.get(ours.target, set()))
                os.sync()
                self.record(self._measurement(case, ours.target, number, memory))
                time.sleep(self.plan.pause)

    def run_resumable(self) -> None:
        """Scenario f, every round, after d: one upload by tus and one by POST /upload per
        FileWallBall a round, who goes first alternating, and which of the two too."""
        if "f" not in self.plan.scenarios or not self.ours:
            return
        size, label = self.plan.resumable_size, size_label(self.plan.resumable_size)
        methods = [
            (Case(f"f-post-{label}", "f", {}), multipart_post),
            (Case(f"f-tus-{label}", "f", {}), tus_upload(self.plan.resumable_patch_bytes)),
        ]
        for number in range(1, self.plan.rounds + 1):
            order = self.ours if number % 2 else list(reversed(self.ours))
            for ours in order:
                for case, send in methods if number % 2 else list(reversed(methods)):
                    storage = ours.bucket.processes() if ours.bucket else []
                    result = streamed_upload(ours, size, storage=storage, send=send)
                    if ours.bucket:
                        ours.bucket.remove_blobs(keep=self.kept_blobs.get(ours.target, set()))
                    os.sync()
                    self.record(self._measurement(case, ours.target, number, result))
                    time.sleep(self.plan.pause)

    def record(self, measurement: Measurement) -> None:
        self.measurements.append(measurement)
        result = measurement.result
        head = f"[dim]round {measurement.round}[/] {measurement.case:<10} {measurement.target:<15}"
        if isinstance(result, WrkResult):
            problems = sum(result.errors.values()) + result.non_2xx
            flag = f" [red]{problems} errors/non-2xx[/]" if problems else ""
            cpu, storage = result.server_cpu_ms_per_request, result.storage_cpu_ms_per_request
            cpu_text = f", CPU {cpu:.3f} ms/request" if cpu is not None else ""
            if storage is not None:
                cpu_text += f" + SeaweedFS {storage:.3f}"
            self.console.print(
                f"{head} {result.rps:>10.1f} req/s {result.mb_per_s:>9.1f} MB/s "
                f"p99 {result.latency_ms['p99']:>8.1f} ms  ({result.requests} requests{cpu_text})"
                f"{flag}"
            )
        else:
            storage = result.storage_rss_growth_mib
            self.console.print(
                f"{head} {result.status} in {result.seconds:.1f} s, {result.mb_per_s:.1f} MB/s, "
                f"RSS growth {result.rss_growth_total_mib:.1f} MiB "
                f"(worker {result.rss_growth_worker_mib:.1f} MiB)"
                + (f"; SeaweedFS +{storage:.1f} MiB" if storage is not None else "")
            )


def _cpu_seconds(processes: list[psutil.Process]) -> float:
    """User + system CPU seconds of `processes` so far (those that have exited count 0)."""
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total
