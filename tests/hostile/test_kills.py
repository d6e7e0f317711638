"""A server killed at random points of its uploads, again and again: after each restart's
recovery there is no temp file and no blob that no record references."""

from __future__ import annotations

import contextlib
import random
import signal
import sqlite3
import threading
import time
from pathlib import Path

import httpx
import psutil

from tests.conftest import staged_files
from tests.integration.conftest import blob_files
from tests.integration.test_server import AUTH, start_server

KILLS = 8  # each costs a start (about a second); the randomness covers the windows over runs


def _upload_forever(url: str, stop: threading.Event, seed: int) -> None:
    """Uploads of a few sizes (some the same content: deduplicated) until the server dies."""
    rng = random.Random(seed)
    with httpx.Client(base_url=url, headers=AUTH, timeout=10) as client:
        while not stop.is_set():
            size = rng.choice([1, 4096, 300_000, 2_000_000])
            body = bytes([rng.randrange(4)]) * size
            try:
                client.put(f"/upload/k{seed}.bin", content=body)
            except httpx.HTTPError:
                return


def _kill(server: object) -> None:
    process = server.process  # type: ignore[attr-defined]
    workers = psutil.Process(process.pid).children(recursive=True)
    process.send_signal(signal.SIGKILL)
    for worker in workers:
        with contextlib.suppress(psutil.NoSuchProcess):
            worker.kill()
    process.wait()
    psutil.wait_procs(workers, timeout=10)


def _referenced(data_dir: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(data_dir / "filewallball.db")) as db:
        return {sha for (sha,) in db.execute("SELECT DISTINCT sha256 FROM files")}


def test_random_kills_leave_no_stray_blob_and_no_temp_file(tmp_path: Path) -> None:
    rng = random.Random(20261203)
    for round_number in range(KILLS):
        server = start_server(tmp_path, log_name=f"run{round_number}.log")
        stop = threading.Event()
        uploaders = [
            threading.Thread(target=_upload_forever, args=(server.url, stop, n), daemon=True)
            for n in range(3)
        ]
        for thread in uploaders:
            thread.start()
        time.sleep(rng.uniform(0.2, 1.5))
        _kill(server)
        stop.set()
        for thread in uploaders:
            thread.join(timeout=15)
    server = start_server(tmp_path, log_name="last.log")  # its start-up recovery sweeps
    try:
        assert staged_files(tmp_path / "blobs" / ".tmp") == []
        on_disk = {path.name for path in blob_files(tmp_path)}
        assert on_disk == _referenced(tmp_path)
        with httpx.Client(base_url=server.url, headers=AUTH) as client:
            for item in client.get("/files", params={"limit": 1000}).json()["items"]:
                assert client.get(f"/download/{item['id']}").status_code == 200
    finally:
        server.stop()
