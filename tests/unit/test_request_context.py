"""RequestContext: opened by the edge, completed by admission, read by routes with context_of."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request

from filewallball.domain.security import parse_network
from filewallball.entrypoints.http.app import create_app
from filewallball.entrypoints.http.context import (
    RequestContext,
    client_address,
    context_of,
    open_context,
)
from filewallball.settings import Settings
from tests.integration.conftest import ADMIN_KEY, GENEROUS

PROXIES = (parse_network("10.0.0.0/8"),)


def _scope(peer: str, *headers: tuple[bytes, bytes]) -> dict[str, Any]:
    return {"type": "http", "client": (peer, 50000), "headers": list(headers)}


def test_open_context_stores_what_context_of_reads() -> None:
    scope = _scope("10.0.0.2", (b"x-forwarded-for", b"198.51.100.7"))
    context = open_context(scope, request_id="rid", trusted_proxies=PROXIES)
    assert context_of(scope) is context
    assert context == RequestContext("rid", "198.51.100.7", True)
    assert context.principal is None  # until admission admits a key
    assert context.response_headers == ()


def test_a_scope_the_edge_has_not_seen_has_no_context() -> None:
    with pytest.raises(KeyError):
        context_of(_scope("10.0.0.2"))


@pytest.mark.parametrize(
    ("peer", "forwarded", "client"),
    [
        ("192.0.2.1", b"198.51.100.7", "192.0.2.1"),  # an untrusted peer's header is ignored
        ("10.0.0.2", b"198.51.100.7, 10.0.0.9", "198.51.100.7"),  # right-most untrusted hop
        ("10.0.0.2", b"203.0.113.1, 198.51.100.7", "198.51.100.7"),  # not the spoofable left
        ("10.0.0.2", b"10.0.0.7, 10.0.0.9", "10.0.0.7"),  # all trusted: the furthest
        ("10.0.0.2", b"198.51.100.7, garbage", "10.0.0.2"),  # garbled: only what we saw
    ],
)
def test_the_client_address_follows_the_trusted_proxy_rules(
    peer: str, forwarded: bytes, client: str
) -> None:
    scope = _scope(peer, (b"x-forwarded-for", forwarded))
    via_proxy = peer.startswith("10.")
    assert client_address(scope, PROXIES, via_proxy=via_proxy) == client
    assert open_context(scope, request_id="r", trusted_proxies=PROXIES).client_ip == client


@asynccontextmanager
async def _serve(app: FastAPI, client_ip: str = "127.0.0.1") -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=(client_ip, 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


def _app(tmp_path: Path, **settings: Any) -> tuple[FastAPI, list[RequestContext]]:
    """The embedded default, with a route that keeps the contexts it was called with."""
    app = create_app(
        Settings(data_dir=tmp_path, bootstrap_admin_key=ADMIN_KEY, **GENEROUS, **settings)
    )
    seen: list[RequestContext] = []

    async def probe(request: Request) -> dict[str, str]:
        seen.append(context_of(request.scope))
        return {}

    app.add_api_route("/probe", probe)
    return app, seen


async def test_a_request_s_context_from_the_edge_through_admission_to_the_route(
    tmp_path: Path,
) -> None:
    app, seen = _app(tmp_path, trusted_proxies=["127.0.0.1/32"])
    async with _serve(app) as client:
        response = await client.get(
            "/probe",
            headers={
                "authorization": f"Bearer {ADMIN_KEY}",
                "x-request-id": "lifecycle-1",
                "x-forwarded-for": "198.51.100.7",
            },
        )
    assert response.status_code == 200, response.text
    [context] = seen
    assert context.request_id == "lifecycle-1" == response.headers["x-request-id"]
    assert context.client_ip == "198.51.100.7"
    assert context.from_trusted_proxy
    assert context.principal is not None
    assert context.principal.key_id == ADMIN_KEY.split("_")[1]
    assert context.principal.client_ip == "198.51.100.7"
    # Admission's RateLimit headers ride on the context to the edge, which sends them.
    names = {name for name, _ in context.response_headers}
    assert names == {b"ratelimit-policy", b"ratelimit"}
    assert response.headers["ratelimit-policy"] == '"default";q=100000;w=60'


async def test_a_direct_client_is_no_trusted_proxy(tmp_path: Path) -> None:
    app, seen = _app(tmp_path)
    async with _serve(app, client_ip="192.0.2.4") as client:
        response = await client.get(
            "/probe",
            headers={"authorization": f"Bearer {ADMIN_KEY}", "x-forwarded-for": "198.51.100.7"},
        )
    assert response.status_code == 200, response.text
    [context] = seen
    assert (context.client_ip, context.from_trusted_proxy) == ("192.0.2.4", False)
    assert len(context.request_id) == 32  # none sent: the edge made one
