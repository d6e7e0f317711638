"""`python -m bench`: start everything on loopback, run the rounds, print and save the figures."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console

from bench import RESULTS_DIR, GiB, size_label
from bench.procs import BenchError
from bench.profiling import FORMATS, profile, py_spy
from bench.report import figures, print_report
from bench.scenarios import FULL_SIZES, SCENARIOS, SMOKE_SIZES, Bench, Case, Plan
from bench.services import check_postgres, check_redis, postgres_database, redis_prefix
from bench.storage import (
    S3,
    STORAGES,
    Bucket,
    launch_seaweed,
    parse_storages,
    seaweed_ready,
    seaweed_version,
)
from bench.system import ensure_tools, git_state, machine, versions
from bench.targets import (
    BEHIND_NGINX,
    NGINX_CONF,
    OURS,
    Ours,
    ServeOptions,
    launch_ours,
    serve_server_option,
    server_env,
    start_ceiling,
    start_nginx,
    target_name,
    wait_until_ready,
)
from filewallball.settings import Settings
from tests.s3_server import BUCKET, SeaweedS3

DEFAULT_PG_DSN = os.environ.get("FWB_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
DEFAULT_REDIS_URL = os.environ.get("FWB_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="FileWallBall (PostgreSQL + Redis, every middleware) against nginx and a "
        "bare FastAPI ceiling, driven by wrk on loopback. See docs/performance.md.",
        epilog="Scenarios: " + "; ".join(f"{k}. {v}" for k, v in SCENARIOS.items()),
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every scenario (3)")
    parser.add_argument("--duration", type=float, default=10, help="seconds of each wrk run (10)")
    parser.add_argument(
        "--warmup", type=float, default=2, help="seconds of an unrecorded first run per case (2)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 2,
        help="server workers, and nginx worker_processes (default: the cores)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=2,
        help="wrk threads (2: the load generator shares the cores)",
    )
    parser.add_argument(
        "--connections", type=int, default=32, help="wrk connections for a, e and downloads (32)"
    )
    parser.add_argument(
        "--large-connections",
        type=int,
        default=4,
        help="wrk connections for downloads of 64 MiB and more (4)",
    )
    parser.add_argument(
        "--upload-connections", type=int, default=100, help="concurrent uploads in c (100)"
    )
    parser.add_argument(
        "--scenarios", default="abcdef", help="which of a-f to run, e.g. `ae` or `b,c`"
    )
    parser.add_argument(
        "--storage",
        default="disk",
        help=f"where FileWallBall keeps its blobs: {' or '.join(STORAGES)} (a real SeaweedFS "
        "bucket the benchmark starts), or `disk,s3`: one FileWallBall each, side by side in "
        "every pair, the S3 rows beside the disk ones (default: disk)",
    )
    parser.add_argument(
        "--server",
        default=None,
        help="passed to `filewallball serve --server` when serve has that option "
        "(default: serve's own default)",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="FWB_LOG_LEVEL of the server (info: production's default, one access line a request)",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny sizes, one round of 1 s runs, no warm-up: proves the harness works (CI)",
    )
    parser.add_argument("--out", type=Path, default=None, help="the JSON file to write")
    parser.add_argument(
        "--profile",
        default="",
        help="cases to profile with py-spy in one extra run each after the rounds, "
        "e.g. `a,b-1KiB` or `b` (all of b); files go to bench/results/",
    )
    parser.add_argument("--profile-format", choices=sorted(FORMATS), default="raw")
    parser.add_argument("--pg-dsn", default=DEFAULT_PG_DSN, help="PostgreSQL admin DSN")
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    parser.add_argument(
        "--no-install", action="store_true", help="fail instead of apt-get installing nginx/wrk"
    )
    return parser


def _plan(args: argparse.Namespace) -> Plan:
    scenarios = frozenset(c for c in args.scenarios.lower() if c.isalpha())
    unknown = scenarios - set(SCENARIOS)
    if unknown or not scenarios:
        raise BenchError(f"--scenarios: choose among {', '.join(SCENARIOS)} (got {args.scenarios})")
    storages = parse_storages(args.storage)
    if args.smoke:
        return Plan(
            rounds=1,
            duration=1,
            warmup=0,
            pause=0.2,
            threads=args.threads,
            connections=min(args.connections, 16),
            large_connections=args.large_connections,
            # 100 uploads at once take longer than a 1 s run on S3: none would complete.
            upload_connections=min(args.upload_connections, 16),
            scenarios=scenarios,
            storages=storages,
            **SMOKE_SIZES,
        )
    return Plan(
        rounds=args.rounds,
        duration=args.duration,
        warmup=args.warmup,
        pause=1.0,
        threads=args.threads,
        connections=args.connections,
        large_connections=args.large_connections,
        upload_connections=args.upload_connections,
        scenarios=scenarios,
        storages=storages,
        **FULL_SIZES,
    )


def _interrupt(signum: int, frame: FrameType | None) -> None:
    # Once: a second Ctrl-C must not cut the clean-up short.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # Wide enough for the table when the output goes to a file or a CI log.
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
    # SIGTERM (CI cancelling, `kill`) cleans up like Ctrl-C: processes, database, keys, files.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        return _run(args, console)
    except BenchError as error:
        console.print(f"[red]benchmark failed:[/] {error}")
        return 2
    except KeyboardInterrupt:
        console.print("[yellow]interrupted; everything started was stopped and removed[/]")
        return 130


def _check_profile_names(spec: str, plan: Plan) -> None:
    """Fail before the run, not after it, on a case name that this run will not have."""
    known = set(plan.scenarios) - {"d", "f"}  # single uploads, not wrk loads: not profiled
    if "b" in plan.scenarios:
        known |= {f"b-{size_label(size)}" for size in plan.download_sizes}
    if "c" in plan.scenarios:
        known |= {f"c-{size_label(size)}" for size in plan.upload_sizes}
    asked = {part.strip() for part in spec.split(",") if part.strip()}
    if asked - known:
        raise BenchError(f"--profile: choose among {', '.join(sorted(known))} (got {spec})")


def _profile_cases(spec: str, cases: list[Case]) -> list[tuple[Case, str]]:
    wanted = {part.strip() for part in spec.split(",") if part.strip()}
    chosen: list[tuple[Case, str]] = []
    for case in cases:
        for target in case.loads:
            if target == "nginx" or target.startswith(BEHIND_NGINX):
                continue
            scenario, case_id = case.label(target)
            if case_id in wanted or scenario in wanted:
                chosen.append((case, target))
    missing = wanted - {c.label(t)[1] for c, t in chosen} - {c.label(t)[0] for c, t in chosen}
    if missing:
        raise BenchError(f"--profile: no case named {', '.join(sorted(missing))} in this run")
    return chosen


def _run(args: argparse.Namespace, console: Console) -> int:
    plan = _plan(args)
    out: Path = args.out or RESULTS_DIR / ("smoke.json" if args.smoke else "latest.json")
    started = datetime.now(UTC)
    # Now: the code the server is about to load, the machine before the load.
    git, host = git_state(), machine()
    if args.profile:
        _check_profile_names(args.profile, plan)
        py_spy()
    tools = ensure_tools(install=not args.no_install)
    has_server_option, default_server = serve_server_option()
    if args.server and not has_server_option:
        raise BenchError("`filewallball serve` has no --server option in this version")
    serve = ServeOptions(workers=args.workers, server=args.server, log_level=args.log_level)
    server_program = args.server or default_server or "uvicorn"
    check_postgres(args.pg_dsn)
    check_redis(args.redis_url)
    need_ours = bool(plan.scenarios & set("abcdf"))
    need_nginx = bool(plan.scenarios & set("bc"))
    free = shutil.disk_usage(tempfile.gettempdir()).free
    if not args.smoke and "c" in plan.scenarios and free < 20 * GiB:
        console.print(
            f"[yellow]only {free / GiB:.0f} GiB free for uploads in {tempfile.gettempdir()}[/]"
        )

    with ExitStack() as stack:
        work = Path(tempfile.mkdtemp(prefix="fwb-bench-"))
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        console.print(
            f"[bold]FileWallBall benchmark[/]: scenarios {''.join(sorted(plan.scenarios))}, "
            f"blobs on {', '.join(plan.storages)}, "
            f"{plan.rounds} round(s) of {plan.duration:g} s, {args.workers} workers "
            f"({server_program}), wrk {plan.threads} threads; work dir {work}"
        )
        seaweed = launch_seaweed(stack, work) if need_ours and S3 in plan.storages else None
        envs, ours = [], []
        # One FileWallBall per storage, each with a database, a Redis prefix and a folder (and
        # on S3 a prefix in the bucket) of its own: two deployments that share only the machine.
        # Each one starts while the next migrates; SeaweedFS boots while the first migrates.
        for storage in plan.storages:
            bucket = Bucket.new(seaweed) if seaweed and storage == S3 else None
            home = work / target_name(OURS, storage)
            env = server_env(
                home=home,
                database_url=stack.enter_context(postgres_database(args.pg_dsn)),
                redis_url=args.redis_url,
                prefix=stack.enter_context(redis_prefix(args.redis_url)),
                log_level=args.log_level,
                bucket=bucket,
            )
            envs.append(env)
            if need_ours:
                if bucket:
                    seaweed_ready(bucket.server)
                ours.append(launch_ours(stack, home, env, serve, storage=storage, bucket=bucket))
        ours = [wait_until_ready(server) for server in ours]
        nginx = start_nginx(stack, tools["nginx"], work, args.workers, ours) if need_nginx else None
        ceiling = start_ceiling(stack, work, envs[0], serve) if "e" in plan.scenarios else None
        bench = Bench(
            plan=plan,
            wrk=tools["wrk"],
            ours=ours,
            nginx=nginx,
            ceiling=ceiling,
            work=work,
            console=console,
        )
        bench.run_memory()
        bench.run_resumable()
        if ours:
            bench.prepare_downloads()
        measurements = bench.run()
        profiles = _profiles(args, bench, work, console)
        rows = figures(plan, measurements)
        load_at_end = list(os.getloadavg())
        _check_alive(ours, seaweed)
        storage_info = _storage_info(seaweed, ours)

    finished = datetime.now(UTC)
    print_report(console, rows, smoke=args.smoke, rounds=plan.rounds, storages=plan.storages)
    checks = [{"figure": row["label"], **check} for row in rows for check in row["checks"]]
    document: dict[str, Any] = {
        "schema_version": 1,
        "command": ["python", "-m", "bench", *(sys.argv[1:] if sys.argv else [])],
        "started_at": started.isoformat(),
        "finished_at": finished.isoformat(),
        "smoke": args.smoke,
        "machine": {**host, "load_average_at_end": load_at_end},
        "versions": versions(tools),
        "git": git,
        "plan": {**asdict(plan), "scenarios": sorted(plan.scenarios)},
        "server": {
            "program": server_program,
            "serve_has_server_option": has_server_option,
            "command": "filewallball serve "
            + " ".join(serve.args(0)).replace("--port 0", "--port <free>"),
            "workers": args.workers,
            "log_level": args.log_level,
            "settings": ours[0].settings if ours else {},
            "settings_by_storage": {server.storage: server.settings for server in ours},
        },
        "storage": storage_info,
        "nginx": {
            "worker_processes": args.workers,
            "config": nginx.config if nginx else NGINX_CONF,
        },
        "figures": rows,
        "targets": checks,
        "all_targets_passed": all(c["passed"] for c in checks),
        "runs": [m.to_json() for m in measurements],
        "profiles": profiles,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=2) + "\n")
    passed = sum(c["passed"] for c in checks)
    console.print(f"targets: {passed}/{len(checks)} pass; figures written to {out}")
    return 0


def _check_alive(ours: list[Ours], seaweed: SeaweedS3 | None) -> None:
    for server in ours:
        if server.managed.alive() is False:
            raise BenchError(
                f"FileWallBall ({server.storage}) exited during the run:\n"
                f"{server.managed.log_tail()}"
            )
    if seaweed and seaweed.process and seaweed.process.poll() is not None:
        raise BenchError(f"SeaweedFS exited during the run:\n{seaweed.log()}")


def _storage_info(seaweed: SeaweedS3 | None, ours: list[Ours]) -> dict[str, Any]:
    """What held the blobs: for the JSON (the S3 server, its command line, each prefix)."""
    if seaweed is None:
        return {}
    return {
        "s3_server": "SeaweedFS `weed server -s3` (tests/s3_server.py) on loopback",
        "seaweedfs": seaweed_version(seaweed),
        "s3_bucket": BUCKET,
        "s3_prefixes": {s.storage: s.bucket.prefix for s in ours if s.bucket},
        # Not set by the benchmark: the adapter's defaults (the caller's FWB_ settings are not
        # passed on), recorded because they bound an upload's memory.
        "s3_part_size_bytes": Settings.model_fields["s3_part_size_bytes"].default,
        "s3_upload_concurrency": Settings.model_fields["s3_upload_concurrency"].default,
    }


def _profiles(
    args: argparse.Namespace, bench: Bench, work: Path, console: Console
) -> list[dict[str, Any]]:
    if not args.profile:
        return []
    results: list[dict[str, Any]] = []
    for case, target in _profile_cases(args.profile, bench.cases()):
        if target == "ceiling" and bench.ceiling:
            managed = bench.ceiling[1]
        elif server := bench.serving(target):
            managed = server.managed
        else:
            continue
        _, case_id = case.label(target)
        output = RESULTS_DIR / f"profile-{case_id}-{target}.{FORMATS[args.profile_format]}"
        console.print(f"[dim]profiling {case_id} ({target}) with py-spy -> {output}[/]")
        summary = profile(
            managed=managed,
            seconds=bench.plan.duration,
            output=output,
            fmt=args.profile_format,
            work=work,
            drive=lambda c=case, t=target: bench.run_load(c, t),  # type: ignore[misc]
        )
        results.append({"case": case_id, "target": target, **summary})
        _print_profile(console, case_id, summary)
        time.sleep(bench.plan.pause)
    return results


def _print_profile(console: Console, case_id: str, summary: dict[str, Any]) -> None:
    if "self" not in summary:
        return
    console.print(
        f"[bold]{case_id}[/]: {summary['samples']} samples of Python holding the GIL "
        "(every server process)"
    )
    for title, key, count in (
        ("inclusive, by package", "inclusive_by_package", 12),
        ("self, by package", "self_by_package", 10),
        ("self, by function", "self", 8),
    ):
        shares = ", ".join(f"{p['name']} {p['share']:.0%}" for p in summary[key][:count])
        console.print(f"  {title}: {shares}")
