"""Connections are bounded in time, on a real `filewallball serve` over a real socket.

A connection that sends nothing, sends its headers a byte at a time, idles after a response, or
sends its body too slowly is cut within seconds, on granian and on uvicorn alike (issue 13).
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import httpx
import psutil
import pytest

from tests.integration.conftest import ADMIN_KEY, blob_files, temp_files
from tests.integration.test_server import SERVERS, Server, start_server

HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 1.0
BODY_MIN_RATE = 200  # bytes a second, over each BODY_TIMEOUT of waiting
# How long past a deadline the server may take to act on it (two cores, other suites running).
SLACK = 4.0
AUTH = {"authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture(scope="module", params=SERVERS)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    started = start_server(
        tmp_path_factory.mktemp("deadlines"),
        ["--server", request.param],
        env={
            "FWB_HEADER_READ_TIMEOUT": str(HEADER_TIMEOUT),
            "FWB_BODY_READ_TIMEOUT": str(BODY_TIMEOUT),
            "FWB_BODY_MIN_RATE": str(BODY_MIN_RATE),
        },
    )
    yield started
    started.stop()


def _connect(server: Server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    sock.settimeout(HEADER_TIMEOUT + SLACK)
    return sock


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server ends the connection (EOF or reset) within `seconds`."""
    sock.settimeout(seconds)
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            if not sock.recv(65536):
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return False


def _response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length (what every problem answer has)."""
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65536)
        if not piece:
            raise AssertionError(f"the connection ended before a response: {data!r}")
        data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines)}
    while len(body) < int(headers.get("content-length", "0")):
        piece = sock.recv(65536)
        if not piece:
            break
        body += piece
    return int(status_line.split()[1]), headers, body


def _files(server: Server) -> list[dict[str, object]]:
    response = httpx.get(f"{server.url}/files", headers=AUTH, timeout=10)
    assert response.status_code == 200, response.text
    items: list[dict[str, object]] = response.json()["items"]
    return items


def test_a_connection_that_sends_nothing_is_closed(server: Server) -> None:
    with _connect(server) as sock:
        assert _closed_within(sock, HEADER_TIMEOUT + SLACK)


def test_headers_sent_a_byte_at_a_time_are_cut(server: Server) -> None:
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200
    with _connect(server) as sock:
        started = time.monotonic()
        closed = False
        for byte in request:
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            time.sleep(0.05)
            if time.monotonic() - started > HEADER_TIMEOUT + SLACK:
                break
        assert closed or _closed_within(sock, 0.5)
        assert time.monotonic() - started < HEADER_TIMEOUT + SLACK


def test_an_idle_keep_alive_connection_is_closed(server: Server) -> None:
    with _connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, _ = _response(sock)
        assert status == 200
        assert _closed_within(sock, HEADER_TIMEOUT + SLACK)


def test_many_idle_connections_are_all_released(server: Server) -> None:
    process = psutil.Process(server.process.pid)
    workers = process.children(recursive=True) or [process]
    before = sum(p.num_fds() for p in [process, *workers])
    socks = [_connect(server) for _ in range(200)]
    try:
        time.sleep(0.5)
        assert sum(p.num_fds() for p in [process, *workers]) > before + 100
        assert all(_closed_within(sock, HEADER_TIMEOUT + SLACK) for sock in socks)
        # A healthy client is served meanwhile, and afterwards.
        assert httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200
        assert sum(p.num_fds() for p in [process, *workers]) < before + 20
    finally:
        for sock in socks:
            sock.close()


def _slow_put(
    server: Server, name: str, *, total: int, chunk: bytes, pause: float
) -> tuple[int, dict[str, str], bytes, float]:
    """PUT `total` bytes as `chunk` every `pause` seconds; the response and when it came."""
    head = (
        f"PUT /upload/{name} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_KEY}\r\n"
        f"Content-Length: {total}\r\n\r\n"
    ).encode()
    with _connect(server) as sock:
        sock.sendall(head)
        started = time.monotonic()
        sent = 0
        try:
            while sent < total and time.monotonic() - started < BODY_TIMEOUT * 3 + SLACK:
                piece = chunk[: total - sent]
                sock.sendall(piece)
                sent += len(piece)
                time.sleep(pause)
        except (BrokenPipeError, ConnectionResetError):
            pass
        sock.settimeout(BODY_TIMEOUT + SLACK)
        status, headers, body = _response(sock)
        return status, headers, body, time.monotonic() - started


def test_a_body_sent_at_a_trickle_is_a_408_and_stores_nothing(server: Server) -> None:
    # 10 bytes a second against a minimum of 200: cut within the first window.
    status, headers, body, took = _slow_put(
        server, "trickle.bin", total=10_000, chunk=b"x", pause=0.1
    )
    assert status == 408, body
    assert headers["content-type"] == "application/problem+json"
    assert json.loads(body)["code"] == "request_timeout"
    assert took < BODY_TIMEOUT + SLACK
    assert not any(item["filename"] == "trickle.bin" for item in _files(server))
    assert blob_files(server.data_dir) == []
    assert temp_files(server.data_dir) == []


def test_a_body_that_stops_is_a_408(server: Server) -> None:
    head = (
        f"PUT /upload/stalled.bin HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_KEY}\r\n"
        "Content-Length: 1000\r\n\r\n"
    ).encode()
    with _connect(server) as sock:
        sock.sendall(head + b"y" * 500)
        started = time.monotonic()
        sock.settimeout(BODY_TIMEOUT + SLACK)
        status, _, body = _response(sock)
        assert status == 408, body
        assert json.loads(body)["code"] == "request_timeout"
        assert time.monotonic() - started < BODY_TIMEOUT + SLACK
        # The rest of the body will not come: the connection is not kept for it.
        assert _closed_within(sock, SLACK)
    assert not any(item["filename"] == "stalled.bin" for item in _files(server))


def test_a_multipart_body_that_stops_is_a_408(server: Server) -> None:
    boundary = "b0undary"
    start = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="m.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    head = (
        f"POST /upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_KEY}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        "Content-Length: 100000\r\n\r\n"
    ).encode()
    with _connect(server) as sock:
        sock.sendall(head + start + b"z" * 1000)
        sock.settimeout(BODY_TIMEOUT + SLACK)
        status, _, body = _response(sock)
    assert status == 408, body
    assert json.loads(body)["code"] == "request_timeout"
    assert not any(item["filename"] == "m.bin" for item in _files(server))


def test_a_slow_but_steady_body_is_stored(server: Server) -> None:
    # 400 bytes a second, twice the minimum, for three windows.
    status, _, body, _ = _slow_put(server, "steady.bin", total=1200, chunk=b"s" * 40, pause=0.1)
    assert status == 201, body
    assert json.loads(body)["size"] == 1200
