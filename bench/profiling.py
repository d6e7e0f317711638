"""`--profile`: py-spy samples the server's processes while one extra run of a case goes on."""

from __future__ import annotations

import re
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.procs import BenchError, Managed, start
from bench.wrk import WrkResult

FORMATS = {"raw": "collapsed.txt", "flamegraph": "svg", "speedscope": "speedscope.json"}
_FRAME = re.compile(r"^(?P<name>.*) \((?P<file>[^():]*)(?::\d+)?\)$")


def py_spy() -> str:
    path = Path(sys.executable).with_name("py-spy")
    if not path.exists():
        raise BenchError(f"{path} not found: py-spy is a dev dependency (`uv sync`)")
    return str(path)


# Frames every sample has (the command, the process model, the event loop): left out of the
# inclusive shares, which would otherwise all read 100 %.
_FRAMEWORK_ROOTS = frozenset(
    {
        "<module>",
        "typer",
        "click",
        "multiprocessing",
        "granian",
        "uvicorn",
        "asyncio",
        "uvloop",
        "threading",
        "runpy",
        "filewallball",
        "filewallball.entrypoints.cli.__init__",
        "filewallball.entrypoints.cli.serve",
        "queue",
    }
)


def _where(file: str) -> str:
    """The package a frame belongs to: `starlette`, `filewallball.adapters.sql`, `asyncio`...

    py-spy names files relative to sys.path (`asyncpg/connection.py`); ours get their module.
    """
    for marker in ("site-packages/", "/src/"):
        if marker in file:
            file = file.split(marker, 1)[1]
    parts = file.removesuffix(".py").split("/")
    if parts[0] == "filewallball" and len(parts) > 1:
        return ".".join(parts)
    if len(parts) > 1 and parts[0].startswith("python3"):
        parts = parts[1:]
    return parts[0] or "?"


def summarise(collapsed: str, top: int = 15) -> dict[str, Any]:
    """Shares of the samples: self time by function and by package, inclusive by package.

    Recorded with `--gil`, a sample is Python code running (holding the GIL): waiting threads
    and the server's native I/O are not in it.
    """
    own: Counter[str] = Counter()
    own_package: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        parsed = [m for m in (_FRAME.match(f) for f in frames) if m]
        if not parsed:
            continue
        count = int(count_text)
        total += count
        leaf = parsed[-1]
        own[f"{leaf['name']} ({leaf['file']})"] += count
        own_package[_where(leaf["file"])] += count
        packages = {_where(m["file"]) for m in parsed} - _FRAMEWORK_ROOTS
        for package in packages:
            inclusive[package] += count

    def shares(counter: Counter[str]) -> list[dict[str, Any]]:
        return [
            {"name": name, "share": round(n / total, 4)} for name, n in counter.most_common(top)
        ]

    return {
        "samples": total,
        "self": shares(own),
        "self_by_package": shares(own_package),
        "inclusive_by_package": shares(inclusive),
    }


def profile(
    *,
    managed: Managed,
    seconds: float,
    output: Path,
    fmt: str,
    work: Path,
    drive: Callable[[], WrkResult],
) -> dict[str, Any]:
    """Record `managed` and its workers with py-spy while `drive` runs the load."""
    command = [
        py_spy(),
        "record",
        "--pid",
        str(managed.pid),
        "--subprocesses",
        "--nonblocking",  # sample without pausing the server: less distortion
        "--gil",  # only Python actually running: not idle threads, not native I/O
        "--rate",
        "200",
        "--duration",
        str(max(1, round(seconds)) + 1),
        "--format",
        fmt,
        "--output",
        str(output),
    ]
    recorder = start("py-spy", command, env={}, log_path=work / f"py-spy-{output.stem}.log")
    time.sleep(1)  # attaching to every process takes a moment
    try:
        result = drive()
        recorder.process.wait(timeout=seconds + 60)
    finally:
        recorder.stop(grace=5)
    if not output.exists():
        raise BenchError(f"py-spy wrote no profile (ptrace allowed?):\n{recorder.log_tail()}")
    summary: dict[str, Any] = {"file": str(output), "format": fmt, "run": result.to_json()}
    if fmt == "raw":
        summary |= summarise(output.read_text(errors="replace"))
    return summary
