"""The docs without a browser: their assets, their policy, the gate, and the bearer scheme.

tests/integration/test_docs_browser.py runs the same pages in chromium.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from filewallball.settings import Settings
from tests.integration.conftest import ADMIN_KEY, GENEROUS, serve

ASSET = re.compile(r'(?:src|href)="(/docs/assets/[^"]+)"')


@pytest.fixture
async def docs(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """The app with FWB_PUBLIC_DOCS, and a client that presents no key."""
    settings = Settings(
        data_dir=tmp_path, bootstrap_admin_key=ADMIN_KEY, public_docs=True, **GENEROUS
    )
    async with serve(settings, key=None) as client:
        yield client


async def test_pages_load_their_assets_from_us_only(docs: httpx.AsyncClient) -> None:
    served: dict[str, str] = {}
    for page in ("/docs", "/redoc"):
        response = await docs.get(page)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/html")
        assert "https://" not in response.text  # no CDN, no web fonts
        served |= {url: page for url in ASSET.findall(response.text)}
    assert {url.rsplit("/", 1)[1] for url in served} == {
        "swagger-ui-bundle.js",
        "swagger-ui.css",
        "redoc.standalone.js",
        "favicon.png",
    }
    types = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}
    for url in served:
        response = await docs.get(url)
        assert response.status_code == 200, url
        assert response.headers["content-type"].startswith(types[Path(url).suffix])
        assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert response.headers["x-content-type-options"] == "nosniff"
        head = await docs.head(url)
        assert head.status_code == 200
        assert head.content == b""
    assert (await docs.get("/docs/assets/0.0.0/swagger-ui.css")).status_code == 404
    assert (await docs.get("/docs/oauth2-redirect")).status_code == 200


async def test_the_policy_names_no_other_host(docs: httpx.AsyncClient) -> None:
    swagger = await docs.get("/docs")
    policy = swagger.headers["content-security-policy"]
    nonce = re.search(r"'nonce-([^']+)'", policy)
    assert nonce is not None
    # Every inline script carries the nonce; the next page gets another.
    assert swagger.text.count("<script>") == 0
    assert swagger.text.count(f'<script nonce="{nonce[1]}">') == 1
    assert nonce[1] not in (await docs.get("/docs")).headers["content-security-policy"]
    redoc = (await docs.get("/redoc")).headers["content-security-policy"]
    for header in (policy, redoc):
        assert "http" not in header  # 'self' only: no CDN, no fonts host
        assert "'unsafe-inline'" not in header.split("script-src")[1].split(";")[0]
    assert "worker-src blob:" in redoc
    assert "img-src 'self' data:" in redoc


async def test_the_description_declares_the_bearer_scheme(docs: httpx.AsyncClient) -> None:
    description = (await docs.get("/openapi.json")).json()
    assert description["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert description["security"] == [{"bearerAuth": []}]
    paths = description["paths"]
    assert paths["/healthz"]["get"]["security"] == []
    assert paths["/readyz"]["get"]["security"] == []
    assert "security" not in paths["/files"]["get"]  # the top-level requirement applies


async def test_private_docs_want_a_key_for_their_assets_too(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, bootstrap_admin_key=ADMIN_KEY, **GENEROUS)
    async with serve(settings) as admin:
        page = await admin.get("/docs")
        assert page.status_code == 200
        asset = ASSET.findall(page.text)[0]
        assert (await admin.get(asset)).status_code == 200
        for url in ("/docs", asset):
            stranger = await admin.get(url, headers={"authorization": ""})
            assert stranger.status_code == 401, url
