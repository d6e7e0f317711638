"""A real clamd for the tests: loopback TCP plus a unix socket, loading only tests/data/clamav.

The signature database there holds one rule, the EICAR test string, so clamd starts in
well under a second and needs no downloaded signatures. Use it from a module-scoped fixture:
`server = start_clamd(find_clamd())`, yield it, then `server.stop()`.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

SIGNATURES = Path(__file__).parent / "data" / "clamav"
SIGNATURE_NAME = "FileWallBall.Test.EICAR"
STREAM_MAX_BYTES = 4 * 1024 * 1024  # clamd's StreamMaxLength
START_TIMEOUT_SECONDS = 60.0


class ClamdFailed(RuntimeError):
    """clamd is installed but did not come up."""


@dataclass
class ClamdServer:
    process: subprocess.Popen[bytes]
    port: int
    root: Path

    @property
    def tcp_address(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    @property
    def unix_address(self) -> str:
        return f"unix://{self.root / 'clamd.ctl'}"

    def log(self) -> str:
        """What clamd printed and logged."""
        return "".join(
            path.read_text(errors="replace")
            for path in (self.root / "clamd.out", self.root / "clamd.log")
            if path.exists()
        )

    def stop(self) -> None:
        """Stop clamd and remove its directory (idempotent)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)


def find_clamd() -> str | None:
    """The clamd binary; Debian puts it in /usr/sbin, which a user's PATH may lack."""
    found = shutil.which("clamd")
    if found is None and Path("/usr/sbin/clamd").is_file():
        found = "/usr/sbin/clamd"
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _config(root: Path, port: int) -> str:
    # Only our own files: no syslog, no /var/log, no /run, no system database, no downloads.
    return "\n".join(
        [
            "Foreground yes",
            f"DatabaseDirectory {root / 'db'}",
            f"TemporaryDirectory {root / 'tmp'}",
            f"LogFile {root / 'clamd.log'}",
            "LogSyslog no",
            "LogTime yes",
            f"PidFile {root / 'clamd.pid'}",
            "TCPAddr 127.0.0.1",
            f"TCPSocket {port}",
            f"LocalSocket {root / 'clamd.ctl'}",
            "LocalSocketMode 600",
            f"StreamMaxLength {STREAM_MAX_BYTES}",
            "MaxThreads 4",
            "ReadTimeout 30",
            "SelfCheck 3600",
            "ConcurrentDatabaseReload no",
            "",
        ]
    )


def _pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"zPING\0")
            return sock.recv(16) == b"PONG\0"
    except OSError:
        return False


def start_clamd(binary: str) -> ClamdServer:
    """Start clamd in a fresh temporary directory and wait until PING answers PONG."""
    # A short directory name: unix socket paths are limited to ~100 bytes.
    root = Path(tempfile.mkdtemp(prefix="fwb-clamd-"))
    (root / "tmp").mkdir()
    shutil.copytree(SIGNATURES, root / "db")
    # The free port can be taken between our probe and clamd's bind: try a few.
    for _ in range(3):
        port = _free_port()
        conf = root / "clamd.conf"
        conf.write_text(_config(root, port))
        with (root / "clamd.out").open("wb") as out:
            process = subprocess.Popen(
                [binary, "--config-file", str(conf)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        server = ClamdServer(process, port, root)
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while process.poll() is None and time.monotonic() < deadline:
            if _pong(port):
                return server
            time.sleep(0.05)
        log = server.log()
        process.kill()
        process.wait()
    shutil.rmtree(root, ignore_errors=True)
    raise ClamdFailed(f"clamd did not answer PING:\n{log}")
