"""/metrics of a real `filewallball serve`: every server and worker count, nothing left behind."""

from __future__ import annotations

import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.test_server import AUTH, SERVERS, Server, start_server

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    response = httpx.get(f"{url}/metrics", headers={**AUTH, "connection": "close"}, timeout=10)
    assert response.status_code == 200, response.text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name`'s samples that carry `labels` (whatever their other labels)."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def requests_counted_per_process(folder: Path, handler: str) -> dict[int, float]:
    """`http_requests_total{handler}` as each process wrote it to its own metrics file."""
    counts: dict[int, float] = {}
    for path in folder.glob("counter_*.db"):
        values = MmapedDict(str(path), read_mode=True)
        try:
            for key, value, _ in values.read_all_values():
                _name, sample, labels, _help = json.loads(key)
                if sample == "http_requests_total" and labels.get("handler") == handler:
                    pid = int(path.stem.removeprefix("counter_"))
                    counts[pid] = counts.get(pid, 0) + value
        finally:
            values.close()
    return counts


def settled(server: Server, expected: float, read: str = "/healthz") -> float:
    """The count of `read` requests once the last one's metrics are written (a moment after
    the client has its answer)."""
    deadline = time.monotonic() + 5
    while True:
        seen = total(scrape(server.url), "http_requests_total", handler=read)
        if seen == expected or time.monotonic() > deadline:
            return seen
        time.sleep(0.05)


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("kind", SERVERS)
def test_metrics_add_up_every_worker_and_leave_no_folder(
    tmp_path: Path, kind: str, workers: int
) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    server = start_server(
        tmp_path, ["--server", kind, "--workers", str(workers)], env={"TMPDIR": str(temp)}
    )
    try:
        folders = list(temp.glob("fwb-metrics-*"))
        assert len(folders) == (1 if workers > 1 else 0)
        first = scrape(server.url)
        # Checked at start and in the background: nothing calls /readyz here.
        assert total(first, "filewallball_dependency_up", dependency="database") == 1
        before = total(first, "http_requests_total", handler="/healthz")

        def ping(_: int) -> None:
            # A connection per request, so the kernel spreads them over the workers.
            response = httpx.get(f"{server.url}/healthz", headers={"connection": "close"})
            assert response.status_code == 200

        made = 0
        with ThreadPoolExecutor(max_workers=8) as pool:
            for _ in range(20):
                list(pool.map(ping, range(32)))
                made += 32
                if workers == 1 or len(requests_counted_per_process(folders[0], "/healthz")) >= 2:
                    break
            else:
                pytest.fail(f"all {made} requests went to one worker")
        for _ in range(4):  # whichever worker answers the scrape
            assert settled(server, before + made) == before + made
    finally:
        server.stop()
    assert not list(temp.glob("fwb-metrics-*"))


def test_a_killed_start_leaves_a_folder_the_next_start_removes(tmp_path: Path) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    abandoned = temp / "fwb-metrics-999999999-x1"  # no such pid
    abandoned.mkdir()
    (abandoned / "counter_123.db").write_bytes(b"")
    someone_elses = temp / "fwb-metrics-other"
    someone_elses.mkdir()
    server = start_server(tmp_path, ["--workers", "2"], env={"TMPDIR": str(temp)})
    try:
        assert not abandoned.exists()
        assert someone_elses.exists()  # not named as ours: not ours to remove
        # granian does not stop a worker still starting when SIGTERM comes (it hangs there).
        deadline = time.monotonic() + 30
        while server.log_path.read_text().count('"Started worker-') < 2:
            assert time.monotonic() < deadline, server.log_path.read_text()
            time.sleep(0.1)
    finally:
        server.stop()


MiB = 1024 * 1024


def _download_and_walk_away(server: Server, file_id: str, *, headers: str = "") -> int:
    """GET the file over a raw socket, read about 5 MB of it, close: what the client took."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.connect(("127.0.0.1", server.port))
        sock.sendall(
            f"GET /download/{file_id} HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: {AUTH['authorization']}\r\n{headers}\r\n".encode()
        )
        taken = 0
        while taken < 5 * MiB:
            chunk = sock.recv(64 * 1024)
            assert chunk, "the server closed first"
            taken += len(chunk)
        return taken


def _bytes_out(server: Server) -> int:
    usage = httpx.get(f"{server.url}/stats/usage", headers=AUTH, timeout=10).json()
    return sum(row["bytes_out"] for row in usage["items"])


@pytest.mark.parametrize(
    ("kind", "headers", "whole"),
    [
        ("uvicorn", "", False),  # streamed through the event loop
        ("granian", "Range: bytes=0-\r\n", False),  # a range streams on granian too
        ("granian", "", True),  # pathsend: granian sends the file itself, out of our sight
    ],
)
def test_an_abandoned_download_counts_what_was_sent(
    tmp_path: Path, kind: str, headers: str, whole: bool
) -> None:
    size = 50 * MiB
    server = start_server(tmp_path, ["--server", kind])
    try:
        record = httpx.put(
            f"{server.url}/upload/big.bin", content=bytes(size), headers=AUTH, timeout=60
        ).json()
        if headers:  # watching for the client leaving cuts nothing short of a client that stays
            response = httpx.get(
                f"{server.url}/download/{record['id']}",
                headers={**AUTH, "range": "bytes=0-"},
                timeout=60,
            )
            assert len(response.content) == size
        before = total(scrape(server.url), "filewallball_downloaded_bytes_total")
        usage_before = _bytes_out(server)
        taken = _download_and_walk_away(server, record["id"], headers=headers)

        def counted() -> tuple[float, int]:
            moved = total(scrape(server.url), "filewallball_downloaded_bytes_total") - before
            return moved, _bytes_out(server) - usage_before

        deadline = time.monotonic() + 10
        while (now := counted()) == (0, 0) or now[0] != now[1]:
            assert time.monotonic() < deadline, now
            time.sleep(0.1)
        metric, usage = now
        assert metric == usage  # the metric and the statistics count the same bytes
        if whole:
            assert usage == size
        else:
            assert taken <= usage < size / 2
    finally:
        server.stop()
