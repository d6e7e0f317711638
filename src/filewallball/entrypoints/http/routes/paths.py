"""The path rules beside the routers: what admission lets in without a key, what is an upload.

Admission (admission.py) applies them before any route runs; the edge gives the docs paths
their own Content-Security-Policy.
"""

from __future__ import annotations

from starlette.types import Scope

from filewallball.domain.security import Network, in_any, parse_address

# Kubernetes probes come from the node, without a key.
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
# The interactive docs (routes/docs.py), the description they load and, under DOCS_ASSETS,
# their scripts and styles: open with FWB_PUBLIC_DOCS.
DOCS_PATHS = frozenset({"/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"})
DOCS_ASSETS = "/docs/assets/"
METRICS_PATH = "/metrics"
TUS_PATH = "/tus"


def open_without_key(
    path: str, client_ip: str | None, *, public_docs: bool, metrics_cidrs: tuple[Network, ...]
) -> bool:
    """The probes, the docs when public, and /metrics for a scraper from an allowed network."""
    if path == METRICS_PATH:
        return in_any(parse_address(client_ip or ""), metrics_cidrs)
    return path in OPEN_PATHS or (public_docs and is_docs(path))


def is_docs(path: str) -> bool:
    """A page of the interactive docs, their description or one of their assets."""
    return path in DOCS_PATHS or path.startswith(DOCS_ASSETS)


def is_upload(scope: Scope) -> bool:
    """POST /upload, PUT /upload/{filename} and POST /tus (a new resumable upload): they have a
    rate limit of their own. A resumable upload's PATCHes count as other requests."""
    path: str = scope["path"]
    method = scope["method"]
    return (method == "POST" and path in ("/upload", TUS_PATH)) or (
        method == "PUT" and path.startswith("/upload/")
    )


def is_tus_discovery(scope: Scope) -> bool:
    """OPTIONS /tus: what the server supports, the same for everyone (tus 1.0)."""
    path: str = scope["path"]
    return scope["method"] == "OPTIONS" and (path == TUS_PATH or path.startswith(TUS_PATH + "/"))
