"""The machine: the Debian tools the benchmark needs (installed when missing), versions, git."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import shutil
import sys
from pathlib import Path
from typing import Any

from bench import REPO_ROOT
from bench.procs import BenchError, run

# Debian bookworm: `nginx` carries the core WebDAV module (dav_methods PUT); on older releases
# the `nginx-light` flavour did. wrk is packaged as `wrk` (with LuaJIT).
_NGINX_PACKAGES = ("nginx", "nginx-light")


def find_tool(name: str) -> str | None:
    """The path of `name`, also in /usr/sbin (not on every user's PATH)."""
    found = shutil.which(name)
    if found:
        return found
    candidate = Path("/usr/sbin") / name
    return str(candidate) if candidate.exists() else None


def _apt_install(packages: list[str]) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run(["apt-get", "update", "-qq"], env=env, timeout=600)
    run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
        env=env,
        timeout=900,
    )


def _stop_system_nginx() -> None:
    """The package starts nginx on port 80 where services may start; we want only our own."""
    if shutil.which("systemctl"):
        run(["systemctl", "disable", "--now", "nginx.service"], check=False)
    nginx = find_tool("nginx")
    if nginx and Path("/run/nginx.pid").exists():
        # The packaged configuration's master, found through its pid file (never by name).
        run([nginx, "-s", "quit"], check=False)


def ensure_tools(*, install: bool) -> dict[str, str]:
    """Paths of nginx (with the WebDAV module) and wrk; apt-get installs them when missing."""
    missing = [name for name in ("nginx", "wrk") if find_tool(name) is None]
    if missing and install:
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            raise BenchError(
                f"missing {', '.join(missing)}: install them with "
                "`sudo apt-get install nginx wrk` (Debian), then run the benchmark again"
            )
        packages: list[str] = []
        if "wrk" in missing:
            packages.append("wrk")
        if "nginx" in missing:
            try:
                _apt_install([*packages, _NGINX_PACKAGES[0]])
            except BenchError:
                _apt_install([*packages, _NGINX_PACKAGES[1]])
            _stop_system_nginx()
        else:
            _apt_install(packages)
    tools = {name: find_tool(name) for name in ("nginx", "wrk")}
    absent = [name for name, path in tools.items() if path is None]
    if absent:
        raise BenchError(f"missing {', '.join(absent)} (run without --no-install to install)")
    paths = {name: path for name, path in tools.items() if path is not None}
    configure = run([paths["nginx"], "-V"]).stderr
    if "--with-http_dav_module" not in configure:
        raise BenchError(f"{paths['nginx']} was built without ngx_http_dav_module (PUT)")
    return paths


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def versions(tools: dict[str, str]) -> dict[str, str]:
    """Versions of everything that shapes the figures."""
    found: dict[str, str] = {"python": platform.python_version()}
    for package in (
        "filewallball",
        "uvicorn",
        "granian",
        "uvloop",
        "httptools",
        "fastapi",
        "starlette",
        "orjson",
        "asyncpg",
        "redis",
        "aiobotocore",
        "botocore",
    ):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = "not installed"
    nginx = run([tools["nginx"], "-v"], check=False)
    found["nginx"] = _first_line(nginx.stderr or nginx.stdout).removeprefix("nginx version: ")
    wrk = run([tools["wrk"], "-v"], check=False)
    found["wrk"] = _first_line(wrk.stdout or wrk.stderr).split(" [")[0]
    return found


def machine() -> dict[str, Any]:
    """Cores, CPU model, memory and kernel."""
    model = platform.processor() or "unknown"
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        match = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
        if match:
            model = match.group(1).strip()
    except OSError:
        pass
    memory = 0
    try:
        meminfo = Path("/proc/meminfo").read_text()
        mem_match = re.search(r"^MemTotal:\s*(\d+) kB", meminfo, re.MULTILINE)
        memory = int(mem_match.group(1)) * 1024 if mem_match else 0
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "cpu_model": model,
        "memory_bytes": memory,
        "kernel": platform.release(),
        "system": platform.platform(),
        "load_average_at_start": list(os.getloadavg()),
    }


def git_state() -> dict[str, Any]:
    """The commit measured, and whether the tree had uncommitted changes (read-only git)."""
    git = shutil.which("git")
    if git is None:
        return {"commit": None, "dirty": None}
    commit = run([git, "-C", str(REPO_ROOT), "rev-parse", "HEAD"], check=False)
    status = run([git, "-C", str(REPO_ROOT), "status", "--porcelain", "--", "src"], check=False)
    return {
        "commit": commit.stdout.strip() or None,
        "src_dirty": bool(status.stdout.strip()) if status.returncode == 0 else None,
    }


def filewallball_command() -> str:
    """The `filewallball` script of the interpreter running the benchmark."""
    script = Path(sys.executable).with_name("filewallball")
    if not script.exists():
        raise BenchError(f"{script} not found: run the benchmark with `uv run python -m bench`")
    return str(script)
