"""The interactive docs, served whole by FileWallBall: Swagger UI at /docs, ReDoc at /redoc.

Their scripts and styles are the fastapi-offline package's copies (pinned in uv.lock), served
under DOCS_ASSETS with the package's version in the path: browsers may keep them for a year, and
an upgrade changes the address. Nothing is loaded from a CDN, so the docs work on an air-gapped
install. The description they load (openapi.py) declares the bearer scheme, for Authorize.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from importlib import metadata, resources
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import FileResponse, HTMLResponse

from filewallball.entrypoints.http.edge import docs_csp
from filewallball.entrypoints.http.routes.paths import DOCS_ASSETS

ASSETS_PACKAGE = "fastapi_offline"
_ASSET_TYPES = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "redoc.standalone.js": "text/javascript; charset=utf-8",
    "favicon.png": "image/png",
}
# The address names the package version, so a cached copy is never stale.
_CACHE_FOREVER = {"cache-control": "public, max-age=31536000, immutable"}
OAUTH2_REDIRECT = "/docs/oauth2-redirect"


def install_docs(app: FastAPI) -> None:
    """Serve /docs, /redoc and their assets (the description they load: openapi.py)."""
    app.include_router(_router())


def _router() -> APIRouter:
    router = APIRouter(include_in_schema=False)
    static = Path(str(resources.files(ASSETS_PACKAGE).joinpath("static")))
    prefix = f"{DOCS_ASSETS}{metadata.version(ASSETS_PACKAGE)}/"
    for name, media_type in _ASSET_TYPES.items():
        router.add_api_route(
            prefix + name, _asset(static / name, media_type), methods=["GET", "HEAD"]
        )

    def asset_url(request: Request, name: str) -> str:
        return f"{request.scope.get('root_path', '').rstrip('/')}{prefix}{name}"

    @router.api_route("/docs", methods=["GET", "HEAD"])
    async def swagger_ui(request: Request) -> HTMLResponse:
        app: FastAPI = request.app
        return _with_nonce(
            get_swagger_ui_html(
                openapi_url=_openapi_url(request),
                title=f"{app.title} - Swagger UI",
                swagger_js_url=asset_url(request, "swagger-ui-bundle.js"),
                swagger_css_url=asset_url(request, "swagger-ui.css"),
                swagger_favicon_url=asset_url(request, "favicon.png"),
                oauth2_redirect_url=OAUTH2_REDIRECT,
                swagger_ui_parameters={
                    # The key stays in the browser's storage across reloads.
                    "persistAuthorization": True,
                    # No online-validator badge, which would send swagger.io our address
                    # (BaseLayout draws none; a layout set in app.swagger_ui_parameters might).
                    "validatorUrl": None,
                    **(app.swagger_ui_parameters or {}),
                },
            )
        )

    @router.api_route(OAUTH2_REDIRECT, methods=["GET", "HEAD"])
    async def oauth2_redirect() -> HTMLResponse:
        return _with_nonce(get_swagger_ui_oauth2_redirect_html())

    @router.api_route("/redoc", methods=["GET", "HEAD"])
    async def redoc(request: Request) -> HTMLResponse:
        app: FastAPI = request.app
        return get_redoc_html(
            openapi_url=_openapi_url(request),
            title=f"{app.title} - ReDoc",
            redoc_js_url=asset_url(request, "redoc.standalone.js"),
            redoc_favicon_url=asset_url(request, "favicon.png"),
            with_google_fonts=False,
        )

    return router


def _asset(path: Path, media_type: str) -> Callable[[], Awaitable[FileResponse]]:
    async def asset() -> FileResponse:
        return FileResponse(path, media_type=media_type, headers=_CACHE_FOREVER)

    return asset


def _openapi_url(request: Request) -> str:
    app: FastAPI = request.app
    return f"{request.scope.get('root_path', '').rstrip('/')}{app.openapi_url}"


def _with_nonce(page: HTMLResponse) -> HTMLResponse:
    """The page with a fresh nonce on its inline scripts, and a policy that admits only those."""
    nonce = secrets.token_urlsafe(16)
    body = bytes(page.body).replace(b"<script>", f'<script nonce="{nonce}">'.encode())
    return HTMLResponse(body, headers={"content-security-policy": docs_csp(nonce).decode()})
