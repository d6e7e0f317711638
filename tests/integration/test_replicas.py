"""Real server processes on one PostgreSQL and Redis: two replicas, and one with two workers.

Statistics must be the same whichever replica answers, and /metrics must add up every worker's
counts (prometheus_client's multiprocess mode), whichever worker answers the scrape. On S3 the
replicas share no volume at all: any of them serves any file, and no byte of one touches a disk.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psutil
import pytest
from prometheus_client.mmap_dict import MmapedDict

from filewallball.domain.models import Sha256, thumbnail_keys
from tests.conftest import REDIS_URL
from tests.images import png
from tests.integration.test_server import AUTH, Server, start_server
from tests.integration.test_server_metrics import scrape
from tests.s3_server import SeaweedS3

T = TypeVar("T")


def shared_env(pg_url: str, redis_prefix: str) -> dict[str, str]:
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


@contextmanager
def two_replicas(data_dir: Path, env: dict[str, str]) -> Iterator[tuple[Server, Server]]:
    """Two `filewallball serve` processes with one environment and one data folder (the blob
    volume), stopped on exit."""
    first = start_server(data_dir, env=env, log_name="a.log")
    try:
        second = start_server(data_dir, env=env, log_name="b.log")
        try:
            yield first, second
        finally:
            second.stop()
    finally:
        first.stop()


@pytest.fixture
def replicas(tmp_path: Path, pg_url: str, redis_prefix: str) -> Iterator[tuple[Server, Server]]:
    """Two `filewallball serve` processes sharing the database, Redis and the blob volume."""
    with two_replicas(tmp_path, shared_env(pg_url, redis_prefix)) as pair:
        yield pair


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
    env = {**shared_env(pg_url, redis_prefix), "PROMETHEUS_MULTIPROC_DIR": str(multiproc_dir)}
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


MiB = 1024 * 1024


class OpenFiles:
    """Polls the open files of servers' processes (workers and renderers included) and keeps
    those under `folders`: a temp file is seen even if it is unlinked at once (O_TMPFILE)."""

    def __init__(self, servers: list[Server], folders: list[Path]) -> None:
        self._pids = [server.process.pid for server in servers]
        self._folders = tuple(f"{folder.resolve()}/" for folder in folders)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self.seen: set[str] = set()

    def __enter__(self) -> OpenFiles:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _poll(self) -> None:
        while not self._stop.is_set():
            for pid in self._pids:
                try:
                    parent = psutil.Process(pid)
                    processes = [parent, *parent.children(recursive=True)]
                except psutil.Error:
                    continue
                for process in processes:
                    try:
                        paths = [opened.path for opened in process.open_files()]
                    except psutil.Error:
                        continue
                    self.seen.update(p for p in paths if p.startswith(self._folders))
            time.sleep(0.005)


def _chunks(data: bytes, size: int = MiB) -> Iterator[bytes]:
    # A little slower than loopback allows, so that every stage of the upload is watched.
    for start in range(0, len(data), size):
        time.sleep(0.02)
        yield data[start : start + size]


def s3_env(pg_url: str, redis_prefix: str, s3_settings: dict[str, str]) -> dict[str, str]:
    """shared_env, with blobs in the bucket (64 MiB uploads, 5 MiB multipart parts)."""
    return {
        **shared_env(pg_url, redis_prefix),
        "FWB_MAX_UPLOAD_BYTES": str(64 * MiB),
        "FWB_S3_PART_SIZE_BYTES": str(5 * MiB),
        **{f"FWB_{name.upper()}": value for name, value in s3_settings.items()},
    }


@contextmanager
def s3_replicas_under(root: Path, env: dict[str, str]) -> Iterator[list[Server]]:
    """Two `filewallball serve` processes with one environment (`s3_env`), each with a data
    folder and a TMPDIR of its own under `root`, stopped on exit."""
    servers: list[Server] = []
    try:
        for name in ("a", "b"):
            data_dir, temp = root / name, root / f"{name}-tmp"
            data_dir.mkdir()
            temp.mkdir()
            # The log beside the data folder, not in it: the folder must stay empty.
            servers.append(
                start_server(data_dir, env={**env, "TMPDIR": str(temp)}, log_name=f"../{name}.log")
            )
        yield servers
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def s3_replicas(
    tmp_path: Path, pg_url: str, redis_prefix: str, s3_settings: dict[str, str]
) -> Iterator[list[Server]]:
    """Two `filewallball serve` processes on one database, Redis prefix and bucket prefix, each
    with a data folder and a TMPDIR of its own; the server secret comes from the environment."""
    with s3_replicas_under(tmp_path, s3_env(pg_url, redis_prefix, s3_settings)) as servers:
        yield servers


def local_folders(servers: list[Server]) -> list[Path]:
    """The data folder and TMPDIR of each server of `s3_replicas_under`."""
    return [
        path
        for s in servers
        for path in (s.data_dir, s.data_dir.with_name(s.data_dir.name + "-tmp"))
    ]


def files_under(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.is_file())


def test_two_replicas_on_s3_share_no_volume(
    s3_replicas: list[Server], s3_server: SeaweedS3, s3_settings: dict[str, str]
) -> None:
    a, b = s3_replicas
    prefix = s3_settings["s3_prefix"]
    folders = local_folders(s3_replicas)
    large = hashlib.sha256(b"replicas").digest() * (11 * MiB // 32) + b"tail"  # three parts
    picture = png(320, 240)
    with (
        httpx.Client(base_url=a.url, headers=AUTH, timeout=60) as on_a,
        httpx.Client(base_url=b.url, headers=AUTH, timeout=60) as on_b,
        OpenFiles(s3_replicas, folders) as opened,
    ):
        put = on_a.put("/upload/large.bin", content=_chunks(large))
        assert put.status_code == 201, put.text
        posted = on_b.post("/upload", files={"file": ("again.bin", large)})  # the same bytes
        assert posted.status_code == 201, posted.text
        image = on_a.post("/upload", files={"file": ("pic.png", picture)}).json()
        first, second = put.json()["id"], posted.json()["id"]
        sha = put.json()["sha256"]
        assert posted.json()["sha256"] == sha == hashlib.sha256(large).hexdigest()

        for here, there_id in ((on_b, first), (on_a, second)):  # each serves the other's upload
            whole = here.get(f"/download/{there_id}")
            assert whole.status_code == 200
            assert hashlib.sha256(whole.content).hexdigest() == sha
            ranged = here.get(
                f"/download/{there_id}", headers={"range": f"bytes={5 * MiB - 10}-{5 * MiB + 9}"}
            )
            assert ranged.status_code == 206
            assert ranged.content == large[5 * MiB - 10 : 5 * MiB + 10]
        # Rendered by B, stored in the bucket; A serves that rendition.
        rendered = on_b.get(f"/thumbnails/{image['id']}", params={"size": "small"})
        assert rendered.status_code == 200, rendered.text
        renditions = {Sha256(key.rsplit("/", 1)[1]) for key in s3_server.keys(f"{prefix}blobs/")}
        renditions -= {sha, image["sha256"]}
        assert len(renditions) == 1 and renditions <= set(thumbnail_keys(image["sha256"]))
        served = on_a.get(f"/thumbnails/{image['id']}", params={"size": "small"})
        assert (served.status_code, served.content) == (200, rendered.content)
        assert served.headers["etag"] == rendered.headers["etag"]

        assert on_b.delete(f"/files/{first}").status_code == 204
        assert on_a.get(f"/files/{first}").status_code == 404
        assert on_a.get(f"/download/{first}").status_code == 404
        assert s3_server.keys(f"{prefix}blobs/{sha}") == [f"{prefix}blobs/{sha}"]  # still used
        assert on_a.delete(f"/files/{second}").status_code == 204
        assert on_b.get(f"/download/{second}").status_code == 404
        # The last file gone, its blob goes: from the bucket both replicas use.
        assert s3_server.keys(f"{prefix}blobs/{sha}") == []

    assert opened.seen == set()  # no upload, download or rendition opened a local file
    for server in s3_replicas:
        assert not (server.data_dir / "blobs").exists()
        assert not (server.data_dir / "secret.key").exists()  # FWB_SECRET_KEY, shared
    for folder in folders:
        assert files_under(folder) == [], folder
    assert s3_server.keys(f"{prefix}tmp/") == []
    assert s3_server.multipart_uploads(prefix) == []
