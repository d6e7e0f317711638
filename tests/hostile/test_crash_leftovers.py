"""A server killed mid-upload leaves nothing behind once it (or another replica) starts again."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx

from tests.conftest import staged_files
from tests.integration.conftest import ADMIN_KEY
from tests.integration.test_server import AUTH, start_server

MiB = 1024 * 1024


def _half_an_upload(port: int) -> socket.socket:
    """A chunked PUT that has sent 8 MiB and waits: its temp file is on disk."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(
        b"PUT /upload/interrupted.bin HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        + f"Authorization: Bearer {ADMIN_KEY}\r\n\r\n".encode()
    )
    chunk = b"y" * MiB
    for _ in range(8):
        sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    return sock


def test_temp_files_of_a_killed_server_are_swept_at_the_next_start(tmp_path: Path) -> None:
    tmp = tmp_path / "blobs" / ".tmp"
    server = start_server(tmp_path)
    uploads = [_half_an_upload(server.port) for _ in range(3)]
    try:
        deadline = time.monotonic() + 10
        while sum(p.stat().st_size for p in staged_files(tmp)) < 3 * MiB:
            assert time.monotonic() < deadline, "the uploads never reached the disk"
            time.sleep(0.05)
        server.kill()  # the server and its workers, at once: no clean-up of any kind
    finally:
        for sock in uploads:
            sock.close()
    assert staged_files(tmp), "the kill left the uploads' temp files"
    again = start_server(tmp_path, log_name="again.log")
    try:
        # Start-up recovery removed them at once, although they are seconds old, not an hour.
        assert staged_files(tmp) == []
        with httpx.Client(base_url=again.url, headers=AUTH) as client:
            assert client.put("/upload/after.txt", content=b"fine").status_code == 201
        assert staged_files(tmp) == []
    finally:
        again.stop()
