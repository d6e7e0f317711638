"""A server killed at random points of its uploads, 20 times, on SQLite and on PostgreSQL +
Redis: after the restarted server's recovery there is no temp file and no blob that no record
references, and every record's bytes download."""

from __future__ import annotations

import contextlib
import random
import signal
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import REDIS_URL, staged_files
from tests.integration.conftest import blob_files
from tests.integration.test_server import AUTH, start_server

# Each costs a start (about a second) and up to a second of uploads; the seed is fixed, and the
# uploads' timing spreads the kills over the stages (staging, rename, commit, dedup).
KILLS = 20


@pytest.fixture(params=["sqlite", "postgres"])
def backend_env(request: pytest.FixtureRequest) -> dict[str, str]:
    if request.param == "sqlite":
        return {}
    return {
        "FWB_DATABASE_URL": request.getfixturevalue("pg_url"),
        "FWB_REDIS_URL": REDIS_URL,
        "FWB_REDIS_PREFIX": request.getfixturevalue("redis_prefix"),
        "FWB_AUTO_MIGRATE": "true",
    }


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


def _records(client: httpx.Client) -> list[dict[str, str]]:
    """Every record, page by page."""
    records: list[dict[str, str]] = []
    params: dict[str, str | int] = {"limit": 200}
    while True:
        page = client.get("/files", params=params).json()
        records += page["items"]
        if page["next_cursor"] is None:
            return records
        params["cursor"] = page["next_cursor"]


def test_random_kills_leave_no_stray_blob_and_no_temp_file(
    tmp_path: Path, backend_env: dict[str, str]
) -> None:
    rng = random.Random(20261203)
    for round_number in range(KILLS):
        server = start_server(tmp_path, env=backend_env, log_name=f"run{round_number}.log")
        stop = threading.Event()
        uploaders = [
            threading.Thread(target=_upload_forever, args=(server.url, stop, n), daemon=True)
            for n in range(3)
        ]
        for thread in uploaders:
            thread.start()
        time.sleep(rng.uniform(0.2, 1.0))
        _kill(server)
        stop.set()
        for thread in uploaders:
            thread.join(timeout=15)
    server = start_server(tmp_path, env=backend_env, log_name="last.log")  # recovery sweeps
    try:
        assert staged_files(tmp_path / "blobs" / ".tmp") == []
        with httpx.Client(base_url=server.url, headers=AUTH) as client:
            records = _records(client)
            assert records, "no upload finished between the kills"
            on_disk = {path.name for path in blob_files(tmp_path)}
            assert on_disk == {record["sha256"] for record in records}
            for record in records:
                assert client.get(f"/download/{record['id']}").status_code == 200
    finally:
        server.stop()
