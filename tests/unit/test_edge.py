"""The edge: the access line names the resolved client and the key; a crash is a 500 problem."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from starlette.requests import Request

from filewallball.entrypoints.http.app import create_app
from filewallball.entrypoints.http.errors import PROBLEM_JSON, internal_error
from filewallball.settings import Settings
from tests.integration.conftest import ADMIN_KEY, GENEROUS

ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
ADMIN_KEY_ID = ADMIN_KEY.split("_")[1]


@asynccontextmanager
async def _serve(app: FastAPI, client_ip: str = "127.0.0.1") -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=(client_ip, 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


def _app(tmp_path: Path, **settings: Any) -> FastAPI:
    app = create_app(
        Settings(data_dir=tmp_path, bootstrap_admin_key=ADMIN_KEY, **GENEROUS, **settings)
    )

    async def crash() -> None:
        raise RuntimeError("a bug")

    async def crash_midway() -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            yield b"first"
            raise RuntimeError("a bug, after the response started")

        return StreamingResponse(body())

    app.add_api_route("/crash", crash)
    app.add_api_route("/crash-midway", crash_midway)
    return app


def _access_lines(out: str) -> list[dict[str, Any]]:
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return [e for e in events if e.get("event") == "access"]


async def test_the_access_line_names_the_client_behind_a_trusted_proxy_and_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    app = _app(tmp_path, trusted_proxies=["127.0.0.1/32"])
    async with _serve(app) as client:
        forwarded = {"x-forwarded-for": "198.51.100.7, 127.0.0.1", "x-request-id": "acc-1"}
        assert (await client.get("/files", headers={**ADMIN, **forwarded})).status_code == 200
        refused = await client.get("/files", headers={**forwarded, "x-request-id": "acc-2"})
        assert refused.status_code == 401
    admitted, stranger = _access_lines(capsys.readouterr().out)
    assert admitted["request_id"] == "acc-1"
    assert admitted["client_ip"] == "198.51.100.7"  # not the proxy, the socket peer
    assert admitted["key_id"] == ADMIN_KEY_ID
    assert (admitted["route"], admitted["status"]) == ("/files", 200)
    assert stranger["request_id"] == "acc-2"
    assert (stranger["client_ip"], stranger["key_id"], stranger["status"]) == (
        "198.51.100.7",
        None,
        401,
    )


async def test_an_untrusted_peer_is_logged_whatever_it_forwards(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    app = _app(tmp_path)
    async with _serve(app, client_ip="192.0.2.4") as client:
        response = await client.get("/files", headers={**ADMIN, "x-forwarded-for": "1.1.1.1"})
        assert response.status_code == 200
    [line] = _access_lines(capsys.readouterr().out)
    assert (line["client_ip"], line["key_id"]) == ("192.0.2.4", ADMIN_KEY_ID)


async def test_a_crash_is_a_500_problem_with_the_request_id_and_every_header(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    app = _app(tmp_path, hsts=True)
    async with _serve(app) as client:
        response = await client.get("/crash", headers={**ADMIN, "x-request-id": "crash-1"})
    assert response.status_code == 500
    assert response.headers["content-type"] == PROBLEM_JSON
    assert response.json() == {
        "type": "about:blank",
        "title": "Internal Server Error",
        "instance": "/crash",
        "status": 500,
        "detail": "an internal error occurred; the request_id identifies it in the logs",
        "code": "internal_error",
        "request_id": "crash-1",
    }
    assert response.headers["x-request-id"] == "crash-1"
    assert (
        response.headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"
    )
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["strict-transport-security"].startswith("max-age=")
    assert "ratelimit" in response.headers
    out = capsys.readouterr().out
    [line] = _access_lines(out)
    assert (line["status"], line["request_id"], line["key_id"]) == (500, "crash-1", ADMIN_KEY_ID)
    assert '"unhandled_error"' in out


async def test_the_500_handler_is_starlette_s_server_error_handler(tmp_path: Path) -> None:
    app = _app(tmp_path)
    assert app.exception_handlers[500] is internal_error
    # Outside the edge (a crash in the edge itself) there may be no context yet.
    bare = Request({"type": "http", "method": "GET", "path": "/", "headers": []})
    response = await internal_error(bare, RuntimeError("in the edge"))
    assert response.status_code == 500
    assert json.loads(bytes(response.body))["request_id"] is None


async def test_a_crash_after_the_response_started_sends_no_second_start(tmp_path: Path) -> None:
    app = _app(tmp_path)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/crash-midway",
        "raw_path": b"/crash-midway",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"testserver"), (b"authorization", ADMIN["authorization"].encode())],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    async with app.router.lifespan_context(app):
        await app(scope, receive, send)  # the edge logs the crash; nothing escapes
    starts = [m for m in sent if m["type"] == "http.response.start"]
    assert [m["status"] for m in starts] == [200]
    assert b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body") == (
        b"first"
    )
