"""The benchmark harness still works (issue 7, part 4): one smoke run, no assertion on speed.

`python -m bench --smoke` starts FileWallBall (PostgreSQL + Redis), nginx and the FastAPI
ceiling, runs every scenario once with tiny sizes and writes its JSON; this checks that every
scenario produced figures and that every upload was a 201. Speed is measured by the full run
(docs/performance.md), never asserted here: CI machines are too noisy for that.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.conftest import unavailable

REPO = Path(__file__).resolve().parents[2]


def _missing_tools() -> list[str]:
    return [
        name
        for name in ("nginx", "wrk")
        if shutil.which(name) is None and not (Path("/usr/sbin") / name).exists()
    ]


def test_smoke_run_measures_every_scenario(
    pg_server: str,
    redis_server: str,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    missing = _missing_tools()
    if missing:
        unavailable(
            f"{' and '.join(missing)} not installed: the benchmark compares against nginx, "
            "driven by wrk (Debian: apt-get install nginx wrk; .ci/run installs them)"
        )
    # CI may keep the figures: FWB_BENCH_SMOKE_OUT=bench/results/smoke.json
    out = Path(os.environ.get("FWB_BENCH_SMOKE_OUT") or tmp_path / "smoke.json")
    command = [sys.executable, "-m", "bench", "--smoke", "--no-install", "--out", str(out)]
    done = subprocess.run(
        [*command, "--pg-dsn", pg_server, "--redis-url", redis_server],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    print(done.stdout)  # the table, in the test's captured output
    assert done.returncode == 0, done.stdout + done.stderr

    report = json.loads(out.read_text())
    runs = report["runs"]
    assert {run["scenario"] for run in runs} == set("abcde")
    for run in runs:
        where = f"{run['case']} ({run['target']})"
        if run["scenario"] == "d":
            assert run["status"] == 201, where
            assert run["mb_per_s"] > 0, where
            assert run["samples"] > 0, where
            continue
        assert run["requests"] > 0, where
        assert run["rps"] > 0, where
        if run["scenario"] in "bc":
            assert run["mb_per_s"] > 0, where
        if run["scenario"] == "c":
            # Every upload answered, and every answer a 201 (nginx's PUT too).
            assert run["statuses"] == {"201": run["requests"]}, where
            assert not any(run["errors"].values()), where
    # FileWallBall behind nginx (components/nginx-front) downloads the largest file.
    assert {run["target"] for run in runs} == {"ours", "nginx", "ceiling", "behind-nginx"}
    for figure in report["figures"]:
        assert figure["median"] is not None, figure["label"]
        if figure["unit"] in ("req/s", "MB/s"):
            assert figure["median"] > 0, figure["label"]
    record_property(
        "bench_figures",
        {figure["label"]: figure["median"] for figure in report["figures"]},
    )
