"""Jobs queued on Redis are processed by a separate `filewallball worker` process."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pyvips  # type: ignore[import-untyped]
from prometheus_client.parser import text_string_to_metric_families

from filewallball.settings import Settings
from tests.conftest import REDIS_URL
from tests.integration.conftest import ADMIN_KEY, GENEROUS, serve
from tests.integration.test_http_files import post
from tests.integration.test_server import _free_port


async def test_worker_renders_thumbnails_queued_by_the_api(
    tmp_path: Path, pg_url: str, redis_prefix: str
) -> None:
    common = {
        "data_dir": tmp_path,
        "database_url": pg_url,
        "redis_url": REDIS_URL,
        "redis_prefix": redis_prefix,
        "auto_migrate": True,
        "bootstrap_admin_key": ADMIN_KEY,
        **GENEROUS,
    }
    image = pyvips.Image.black(900, 300, bands=3).linear([1, 1, 1], [10, 120, 240]).cast("uchar")
    async with serve(Settings(**common)) as client:  # type: ignore[arg-type]
        record = (await post(client, image.pngsave_buffer(), "banner.png")).json()
        assert record["thumbnail_status"] == "pending"
        metrics_port = _free_port()
        env = {
            **os.environ,
            "FWB_DATA_DIR": str(tmp_path),
            "FWB_DATABASE_URL": pg_url,
            "FWB_REDIS_URL": REDIS_URL,
            "FWB_REDIS_PREFIX": redis_prefix,
            "FWB_WORKER_METRICS_PORT": str(metrics_port),
        }
        worker = subprocess.Popen(  # noqa: ASYNC220 - a separate process is the point of the test
            [str(Path(sys.executable).with_name("filewallball")), "worker", "--concurrency", "2"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 30
            status = "pending"
            while status == "pending" and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
                status = (await client.get(f"/files/{record['id']}")).json()["thumbnail_status"]
            assert status == "ready"
            # Its own metrics: the job it ran, by task (not the `job` label Prometheus keeps),
            # counted once the job is over (a moment after the record says ready).
            success = frozenset({"task": "thumbnail", "outcome": "success"}.items())
            runs: dict[frozenset[tuple[str, str]], float] = {}
            async with httpx.AsyncClient() as scraper:
                while not runs.get(success) and time.monotonic() < deadline:
                    scraped = await scraper.get(
                        f"http://127.0.0.1:{metrics_port}/metrics", timeout=5
                    )
                    assert scraped.status_code == 200
                    runs = {
                        frozenset(sample.labels.items()): sample.value
                        for family in text_string_to_metric_families(scraped.text)
                        for sample in family.samples
                        if sample.name == "filewallball_job_runs_total"
                    }
                    await asyncio.sleep(0.1)
            assert runs.get(success, 0) >= 1, runs
        finally:
            worker.terminate()
            output, _ = worker.communicate(timeout=30)
        assert worker.returncode == 0, output.decode()[-2000:]
        # Served from what the worker stored (WebP and JPEG are rendered ahead).
        response = await client.get(
            f"/thumbnails/{record['id']}",
            params={"size": "small"},
            headers={"accept": "image/webp"},
        )
        assert response.status_code == 200
        assert pyvips.Image.new_from_buffer(response.content, "").width == 256


def test_worker_needs_redis(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(Path(sys.executable).with_name("filewallball")), "worker"],
        env={**os.environ, "FWB_DATA_DIR": str(tmp_path)},
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert b"FWB_REDIS_URL" in result.stderr


def test_worker_refuses_a_metrics_port_in_use_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [str(Path(sys.executable).with_name("filewallball")), "worker"],
            env={
                **os.environ,
                "FWB_DATA_DIR": str(tmp_path),
                "FWB_REDIS_URL": "redis://127.0.0.1:1/0",
                "FWB_WORKER_METRICS_PORT": str(port),
            },
            capture_output=True,
            timeout=60,
        )
    assert result.returncode == 2
    [line] = result.stderr.decode().splitlines()
    assert f"127.0.0.1:{port}" in line and "FWB_WORKER_METRICS_PORT" in line
