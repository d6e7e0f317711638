"""A real `filewallball serve` process: streaming uploads and downloads over a real socket."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import select
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import staged_files
from tests.integration.conftest import ADMIN_KEY, GENEROUS

MiB = 1024 * 1024
AUTH = {"authorization": f"Bearer {ADMIN_KEY}"}


@dataclass
class Server:
    url: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    data_dir: Path

    def stop(self) -> None:
        """SIGTERM, and wait for a graceful exit (killed after 30 s)."""
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise

    def kill(self) -> None:
        """SIGKILL the server and its workers at once: no clean-up of any kind (a crash)."""
        workers = psutil.Process(self.process.pid).children(recursive=True)
        self.process.send_signal(signal.SIGKILL)
        for worker in workers:
            with contextlib.suppress(psutil.NoSuchProcess):
                worker.kill()
        self.process.wait()
        psutil.wait_procs(workers, timeout=10)

    def rss(self) -> int:
        proc = psutil.Process(self.process.pid)
        return int(sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]))

    @contextmanager
    def rss_growth(self) -> Iterator[Callable[[], int]]:
        """Sample the RSS every 20 ms while the block runs; what it gives is the peak growth."""
        before = self.rss()
        peak = before
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, self.rss())
                time.sleep(0.02)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            yield lambda: peak - before
        finally:
            done.set()
            sampler.join()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(
    data_dir: Path,
    extra_args: list[str] | None = None,
    *,
    scheme: str = "http",
    verify: ssl.SSLContext | bool = True,
    env: dict[str, str] | None = None,
    log_name: str = "server.log",
    start_timeout: float = 30,
) -> Server:
    """Start `filewallball serve` on a free port and wait until /healthz answers."""
    port = _free_port()
    log_path = data_dir / log_name
    command = Path(sys.executable).with_name("filewallball")
    env = {
        **os.environ,
        "FWB_DATA_DIR": str(data_dir),
        "FWB_MAX_UPLOAD_BYTES": str(512 * MiB),
        "FWB_PREVIEW_MAX_BYTES": "1024",
        "FWB_BOOTSTRAP_ADMIN_KEY": ADMIN_KEY,
        "FWB_RATE_LIMIT": GENEROUS["rate_limit"],
        "FWB_UPLOAD_RATE_LIMIT": GENEROUS["upload_rate_limit"],
        **(env or {}),
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(command), "serve", "--port", str(port), *(extra_args or [])],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    url = f"{scheme}://127.0.0.1:{port}"
    deadline = time.monotonic() + start_timeout
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=1, verify=verify).status_code == 200:
                return Server(url, port, process, log_path, data_dir)
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the server did not start:\n{log_path.read_text()}")
        time.sleep(0.1)


SERVERS = ["granian", "uvicorn"]


@pytest.fixture(scope="module", params=SERVERS)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """`filewallball serve` on each server it can run on."""
    started = start_server(tmp_path_factory.mktemp("served"), ["--server", request.param])
    yield started
    started.stop()


def _pattern(size: int, chunk: int = MiB) -> Iterator[bytes]:
    block = hashlib.sha256(b"seed").digest() * (chunk // 32)
    sent = 0
    while sent < size:
        piece = block[: min(chunk, size - sent)]
        sent += len(piece)
        yield piece


def _sha_of(size: int) -> str:
    digest = hashlib.sha256()
    for piece in _pattern(size):
        digest.update(piece)
    return digest.hexdigest()


def test_streamed_round_trip_is_byte_identical(server: Server) -> None:
    size = 64 * MiB + 123
    with httpx.Client(base_url=server.url, timeout=60, headers=AUTH) as client:
        response = client.put("/upload/big.bin", content=_pattern(size))
        assert response.status_code == 201, response.text
        record = response.json()
        assert record["size"] == size
        assert record["sha256"] == _sha_of(size)
        digest = hashlib.sha256()
        received = 0
        with client.stream("GET", f"/download/{record['id']}") as download:
            assert download.status_code == 200
            for chunk in download.iter_raw():
                digest.update(chunk)
                received += len(chunk)
        assert received == size
        assert digest.hexdigest() == record["sha256"]
        tail = client.get(f"/download/{record['id']}", headers={"range": "bytes=-100"})
        assert tail.status_code == 206
        assert tail.content == b"".join(_pattern(size))[-100:]


def test_multipart_upload_streams_too(server: Server, tmp_path: Path) -> None:
    source = tmp_path / "source.bin"
    with source.open("wb") as out:
        for piece in _pattern(20 * MiB):
            out.write(piece)
    with (
        httpx.Client(base_url=server.url, timeout=60, headers=AUTH) as client,
        source.open("rb") as handle,
    ):
        response = client.post("/upload", files={"file": ("source.bin", handle)})
    assert response.status_code == 201, response.text
    assert response.json()["sha256"] == _sha_of(20 * MiB)


def test_too_large_is_rejected_before_the_body_is_sent(server: Server) -> None:
    """The 413 arrives while the client is still sending: the server stops at the limit."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            b"PUT /upload/huge.bin HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            + f"Authorization: Bearer {ADMIN_KEY}\r\n\r\n".encode()
        )
        chunk = b"x" * MiB
        answer = b""
        sent_mib = 0
        for _ in range(2048):  # up to 2 GiB, far past the 512 MiB limit
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except OSError:
                break
            sent_mib += 1
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                answer = sock.recv(65536)
                break
        sock.settimeout(10)
        while b"\r\n\r\n" not in answer:
            more = sock.recv(65536)
            if not more:
                break
            answer += more
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent_mib < 600  # the answer came near the limit (plus socket buffers), not at the end
    assert staged_files(server.data_dir / "blobs" / ".tmp") == []


def test_memory_stays_flat_during_a_large_upload(server: Server) -> None:
    """A regression guard, not a benchmark: a buffered upload would grow RSS by the file size."""
    size = 384 * MiB
    with (
        server.rss_growth() as growth,
        httpx.Client(base_url=server.url, timeout=120, headers=AUTH) as client,
    ):
        response = client.put("/upload/rss.bin", content=_pattern(size))
    assert response.status_code == 201, response.text
    assert growth() < 100 * MiB, f"RSS grew by {growth() / MiB:.1f} MiB"


def test_delete_while_a_download_runs(server: Server) -> None:
    size = 32 * MiB
    with httpx.Client(base_url=server.url, timeout=60, headers=AUTH) as client:
        record = client.put("/upload/deleted.bin", content=_pattern(size)).json()
        digest = hashlib.sha256()
        with client.stream("GET", f"/download/{record['id']}") as download:
            chunks = download.iter_raw()
            digest.update(next(chunks))
            with httpx.Client(base_url=server.url, headers=AUTH) as other:
                assert other.delete(f"/files/{record['id']}").status_code == 204
                assert other.get(f"/files/{record['id']}").status_code == 404
            for chunk in chunks:
                digest.update(chunk)
        assert digest.hexdigest() == record["sha256"]


def test_logs_are_json_lines_with_request_ids(server: Server) -> None:
    with httpx.Client(base_url=server.url, headers=AUTH) as client:
        client.get("/files/nope", headers={"x-request-id": "trace-me-1"})
    time.sleep(0.2)
    lines = [line for line in server.log_path.read_text().splitlines() if line.strip()]
    events = [json.loads(line) for line in lines]  # every line is JSON
    assert all("request_id" in event for event in events)
    access = [e for e in events if e.get("event") == "access" and e["request_id"] == "trace-me-1"]
    assert len(access) == 1
    assert access[0]["status"] == 404
    assert access[0]["route"] == "/files/{file_id}"
    assert access[0]["method"] == "GET"
    assert access[0]["client_ip"] == "127.0.0.1"
    assert access[0]["duration_ms"] >= 0
