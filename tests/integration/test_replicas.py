"""Real server processes on one PostgreSQL and Redis: two replicas, and one with two workers.

Statistics must be the same whichever replica answers, and /metrics must add up every worker's
counts (prometheus_client's multiprocess mode), whichever worker answers the scrape.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from prometheus_client.mmap_dict import MmapedDict

from tests.conftest import REDIS_URL
from tests.integration.test_server import AUTH, Server, start_server
from tests.integration.test_server_metrics import scrape

T = TypeVar("T")


def _shared_env(pg_url: str, redis_prefix: str) -> dict[str, str]:
    return {
        "FWB_DATABASE_URL": pg_url,
        "FWB_REDIS_URL": REDIS_URL,
        "FWB_REDIS_PREFIX": redis_prefix,
        "FWB_AUTO_MIGRATE": "true",
        "FWB_MAX_UPLOAD_BYTES": "4096",
        "FWB_SECRET_KEY": "replicas-share-one-secret-" + "s" * 16,
    }


def eventually(read: Callable[[], T], check: Callable[[T], bool], seconds: float = 10) -> T:
    """`read()` until `check` holds (or the time is up); the last value read."""
    deadline = time.monotonic() + seconds
    while True:
        value = read()
        if check(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


@pytest.fixture
def replicas(tmp_path: Path, pg_url: str, redis_prefix: str) -> Iterator[tuple[Server, Server]]:
    """Two `filewallball serve` processes sharing the database, Redis and the blob volume."""
    env = _shared_env(pg_url, redis_prefix)
    first = start_server(tmp_path, env=env, log_name="a.log")
    try:
        second = start_server(tmp_path, env=env, log_name="b.log")
        try:
            yield first, second
        finally:
            second.stop()
    finally:
        first.stop()


def test_statistics_agree_across_two_replicas(replicas: tuple[Server, Server]) -> None:
    a, b = replicas
    with (
        httpx.Client(base_url=a.url, headers=AUTH) as on_a,
        httpx.Client(base_url=b.url, headers=AUTH) as on_b,
    ):
        created = on_a.post("/admin/keys", json={"name": "ann", "role": "uploader"})
        ann = {"authorization": f"Bearer {created.json()['key']}"}
        ann_id = created.json()["key"].split("_")[1]

        first = on_a.post("/upload", files={"file": ("a.txt", b"a" * 100)}, headers=ann).json()
        on_b.post("/upload", files={"file": ("b.txt", b"a" * 100)}, headers=ann)  # same bytes
        on_b.post("/upload", files={"file": ("c.txt", b"c" * 300)}, headers=ann)
        too_big = on_b.post("/upload", files={"file": ("big", b"x" * 5000)}, headers=ann)
        assert too_big.status_code == 413
        assert on_a.get("/files", headers={"authorization": ""}).status_code == 401
        assert on_b.get(f"/download/{first['id']}", headers=ann).content == b"a" * 100
        ranged = on_a.get(f"/download/{first['id']}", headers={**ann, "range": "bytes=0-9"})
        assert ranged.status_code == 206
        time.sleep(0.3)  # the lookups so far reach the shared counts within a tenth of a second
        cache_before = on_a.get("/stats/cache").json()

        def _lookups(stats: dict[str, Any]) -> int:
            """The record lookups counted since cache_before, by both replicas together."""
            cache = stats["cache"]
            return int(
                cache["hits"] - cache_before["hits"] + cache["misses"] - cache_before["misses"]
            )

        for client in (on_a, on_b, on_a, on_b):
            assert client.get(f"/files/{first['id']}", headers=ann).status_code == 200

        def everything(client: httpx.Client) -> dict[str, Any]:
            return {
                "errors": client.get("/stats/errors", params={"window": "1h"}).json(),
                "usage": client.get("/stats/usage", params={"window": "1h"}).json(),
                "storage": client.get("/stats/storage").json(),
                "cache": client.get("/stats/cache").json(),
            }

        # Each replica adds its cache counts to the shared ones within a tenth of a second.
        from_a, from_b = eventually(
            lambda: (everything(on_a), everything(on_b)),
            lambda s: s[0]["errors"]["uploads"] == 4 and s[0] == s[1] and _lookups(s[0]) == 4,
            seconds=10,
        )
    assert from_a == from_b  # whichever replica answers

    assert from_a["errors"]["succeeded"] == 3
    assert from_a["errors"]["failed"] == 1
    assert from_a["errors"]["errors_by_reason"] == {"file_too_large": 1}
    ann_row = next(row for row in from_a["usage"]["items"] if row["client"] == ann_id)
    assert ann_row == {
        "client": ann_id,
        "actor": "ann",
        "uploads": 3,
        "bytes_in": 500,
        "downloads": 2,
        "bytes_out": 110,
        "errors": 1,
    }
    assert from_a["storage"]["files"] == 3
    assert from_a["storage"]["logical_bytes"] == 500
    assert from_a["storage"]["stored_bytes"] == 400
    cache = from_a["cache"]
    assert cache["shared"] is True
    # Four lookups through two replicas: the first may miss (the upload's replica cached it).
    assert _lookups(from_a) == 4
    assert cache["hits"] - cache_before["hits"] >= 3
    assert cache["entries"] >= 1


def _upload_counts_per_process(multiproc_dir: Path) -> dict[str, float]:
    """Successful uploads each worker process counted, read from its own metrics file."""
    counts: dict[str, float] = {}
    for path in multiproc_dir.glob("counter_*.db"):
        pid = path.stem.removeprefix("counter_")
        values = MmapedDict(str(path), read_mode=True)
        try:
            for key, value, _ in values.read_all_values():
                _name, sample, labels, _help = json.loads(key)
                if sample == "filewallball_uploads_total" and labels.get("outcome") == "success":
                    counts[pid] = counts.get(pid, 0) + value
        finally:
            values.close()
    return counts


def test_metrics_add_up_every_worker(tmp_path: Path, pg_url: str, redis_prefix: str) -> None:
    multiproc_dir = tmp_path / "metrics"
    multiproc_dir.mkdir()
    env = {**_shared_env(pg_url, redis_prefix), "PROMETHEUS_MULTIPROC_DIR": str(multiproc_dir)}
    server = start_server(tmp_path, ["--workers", "2"], env=env)
    try:
        sent = 0

        def upload(n: int) -> int:
            # A connection per upload, so the kernel spreads them over both workers.
            body = f"upload number {n} ".encode() * 10
            response = httpx.post(
                f"{server.url}/upload",
                files={"file": (f"{n}.txt", body)},
                headers={**AUTH, "connection": "close"},
                timeout=30,
            )
            assert response.status_code == 201, response.text
            return len(body)

        sent_bytes = 0
        with ThreadPoolExecutor(max_workers=8) as pool:
            # Bursts of concurrent uploads until both workers have handled some.
            for _ in range(10):
                sent_bytes += sum(pool.map(upload, range(sent, sent + 16)))
                sent += 16
                if len([c for c in _upload_counts_per_process(multiproc_dir).values() if c]) >= 2:
                    break
            else:
                pytest.fail(f"all {sent} uploads went to one worker")

        for _ in range(6):  # whichever worker answers the scrape, the totals are everyone's
            samples = scrape(server.url)
            uploads = samples.get(
                (
                    "filewallball_uploads_total",
                    frozenset({"outcome": "success", "reason": "none"}.items()),
                ),
                0.0,
            )
            assert uploads == sent
            assert samples[("filewallball_uploaded_bytes_total", frozenset())] == sent_bytes
            assert samples[("filewallball_stored_files", frozenset())] == sent
            http_uploads = sum(
                value
                for (name, labels), value in samples.items()
                if name == "http_requests_total" and ("handler", "/upload") in labels
            )
            assert http_uploads == sent
    finally:
        server.stop()
