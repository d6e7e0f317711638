"""Drive wrk with the Lua scripts of bench/lua and read the JSON line their done() prints."""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import LUA_DIR
from bench.procs import BenchError, run


@dataclass(frozen=True)
class Load:
    """One wrk invocation: what to request and how hard."""

    url: str  # scheme://host:port, the path is in `path` or `path_prefix`
    connections: int
    threads: int
    duration: float
    timeout: float
    path: str = ""  # GET
    path_prefix: str = ""  # PUT: names are appended
    body_file: Path | None = None  # PUT
    body_size: int = 0  # bytes per request (download) or per upload
    authorization: str = ""


@dataclass
class WrkResult:
    """One run's figures; rates are per second of the run, latencies in milliseconds."""

    requests: int
    duration_s: float
    rps: float
    mb_per_s: float  # payload only: body_size x requests, in 10^6 bytes
    latency_ms: dict[str, float]
    errors: dict[str, int]
    non_2xx: int
    statuses: dict[str, int] = field(default_factory=dict)  # PUT runs only: every status
    # CPU time the server's processes spent per request (user + system, all workers): unlike
    # req/s, it hardly moves when other work shares the cores.
    server_cpu_ms_per_request: float | None = None
    # S3: the S3 server's CPU time per request (SeaweedFS), beside the server's, not in it.
    storage_cpu_ms_per_request: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def parse(output: str, *, body_size: int) -> WrkResult:
    line = next((line for line in output.splitlines() if line.startswith("BENCH_JSON ")), None)
    if line is None:
        raise BenchError(f"wrk printed no BENCH_JSON line:\n{output}")
    raw = json.loads(line.removeprefix("BENCH_JSON "))
    duration = raw["duration_us"] / 1e6
    requests = int(raw["requests"])
    errors = {name: int(count) for name, count in raw["errors"].items()}
    return WrkResult(
        requests=requests,
        duration_s=round(duration, 3),
        rps=round(requests / duration, 1) if duration else 0.0,
        mb_per_s=round(requests * body_size / duration / 1e6, 2) if duration else 0.0,
        latency_ms={name: round(value / 1000, 3) for name, value in raw["latency_us"].items()},
        errors={name: count for name, count in errors.items() if name != "status"},
        non_2xx=errors["status"],
        statuses={str(code): int(n) for code, n in sorted(raw["statuses"].items())},
    )


def run_wrk(wrk: str, load: Load) -> WrkResult:
    """Run wrk once (GET when `load.path`, else PUT of `load.body_file`)."""
    env = {
        **os.environ,
        "BENCH_LUA_DIR": str(LUA_DIR),
        "BENCH_AUTHORIZATION": load.authorization,
    }
    if load.path:
        script = LUA_DIR / "get.lua"
        env["BENCH_PATH"] = load.path
    else:
        if load.body_file is None:
            raise BenchError("a PUT load needs a body file")
        script = LUA_DIR / "put.lua"
        env |= {
            "BENCH_PATH_PREFIX": load.path_prefix,
            "BENCH_BODY_FILE": str(load.body_file),
            "BENCH_RUN_ID": secrets.token_hex(4),
        }
    command = [
        wrk,
        f"--threads={load.threads}",
        f"--connections={load.connections}",
        f"--duration={max(1, round(load.duration))}s",
        f"--timeout={max(1, round(load.timeout))}s",
        "--script",
        str(script),
        f"{load.url}{load.path or load.path_prefix}",
    ]
    done = run(command, env=env, timeout=load.duration + load.timeout + 60)
    return parse(done.stdout, body_size=load.body_size)
