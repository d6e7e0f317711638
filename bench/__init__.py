"""The benchmark of issue 7: FileWallBall in production mode against nginx, driven by wrk.

`uv run python -m bench` (see docs/performance.md) starts everything on loopback, runs the
scenarios in alternating rounds, prints medians and writes bench/results/latest.json.
"""

from __future__ import annotations

from pathlib import Path

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent
LUA_DIR = PACKAGE_DIR / "lua"
RESULTS_DIR = PACKAGE_DIR / "results"


def size_label(size: int) -> str:
    """1024 -> "1KiB", 100 MiB -> "100MiB": the name of a case in the table and the JSON."""
    for unit, factor in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size}B"
