"""Child processes of the benchmark: started in their own session, always stopped by their id."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil  # type: ignore[import-untyped]


class BenchError(RuntimeError):
    """Something the benchmark needs is missing or broke; the message says what."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run(
    command: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 120,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion and capture its output; BenchError when it fails."""
    try:
        done = subprocess.run(  # noqa: S603 - commands are built by the benchmark, never a shell
            list(command),
            env=dict(env) if env is not None else None,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise BenchError(f"{' '.join(command)}: {error}") from error
    if check and done.returncode != 0:
        raise BenchError(
            f"{' '.join(command)} exited with {done.returncode}:\n{done.stdout}{done.stderr}"
        )
    return done


@dataclass
class Managed:
    """A long-running child (server, nginx) with its output in a log file."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    stopped: bool = field(default=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def tree(self) -> list[psutil.Process]:
        """The process and all its descendants (uvicorn/granian workers, nginx workers)."""
        try:
            parent = psutil.Process(self.pid)
            return [parent, *parent.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self, grace: float = 20) -> None:
        """SIGTERM, then after `grace` seconds SIGKILL to the process group we created."""
        if self.stopped:
            return
        self.stopped = True
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=grace)
        # Workers left behind by a killed parent are still in the session we created for it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)


def start(
    name: str,
    command: Sequence[str],
    *,
    env: Mapping[str, str],
    log_path: Path,
    cwd: Path | None = None,
) -> Managed:
    """Start `command` in a new session (so Ctrl-C reaches only us, and we stop it ourselves)."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(  # noqa: S603 - commands are built by the benchmark
            list(command),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
        )
    return Managed(name, process, log_path)


def wait_http(
    managed: Managed,
    url: str,
    *,
    timeout: float = 60,
    accept: Callable[[httpx.Response], bool] = lambda r: r.status_code == 200,
) -> httpx.Response:
    """Poll `url` until `accept` says yes; BenchError with the log tail when it never does."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if not managed.alive():
            break
        try:
            response = httpx.get(url, timeout=2)
            if accept(response):
                return response
            last = f"{response.status_code} {response.text[:300]}"
        except httpx.TransportError as error:
            last = repr(error)
        time.sleep(0.1)
    raise BenchError(
        f"{managed.name} did not become ready at {url} ({last}); its log:\n{managed.log_tail()}"
    )
