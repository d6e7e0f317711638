"""The one ASGI layer around the routes: request id, access log, HTTP metrics, security headers.

Every layer of middleware wraps `send` and costs each request a few function calls per message;
this one does the work of four (request context, security headers, the gate's rate headers,
prometheus-fastapi-instrumentator's middleware), with one wrapper. The gate (security.py) and
CORS sit inside it and wrap nothing.
"""

from __future__ import annotations

import functools
import json
import re
import time
import uuid
from collections.abc import Callable
from http import HTTPStatus

import structlog
from prometheus_fastapi_instrumentator import metrics as prometheus_metrics
from prometheus_fastapi_instrumentator.metrics import Info
from prometheus_fastapi_instrumentator.routing import get_route_name
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from filewallball.entrypoints.http.security import DOCS_PATHS
from filewallball.request_scope import begin_request

_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")

API_CSP = b"default-src 'none'; frame-ancestors 'none'"
# The interactive docs load FastAPI's Swagger UI / ReDoc assets from their CDN.
DOCS_CSP = (
    b"default-src 'none'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    b"style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net https://fonts.googleapis.com; "
    b"font-src https://fonts.gstatic.com; img-src 'self' data: https://fastapi.tiangolo.com; "
    b"connect-src 'self'; worker-src blob:; frame-ancestors 'none'"
)
_SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
)
_HSTS = (b"strict-transport-security", b"max-age=31536000; includeSubDomains")
# Not measured: the scrape itself.
_UNMEASURED = frozenset({"/metrics"})
# Up to the longest transfers the alerts watch (p95 upload/download above 30 s).
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

log = structlog.get_logger("filewallball.access")


@functools.cache
def http_metrics() -> tuple[Callable[[Info], None], ...]:
    """Requests and latency by route template, made once per process (a second app reuses them).

    prometheus-fastapi-instrumentator's own metrics (`http_requests_total` by handler, method
    and status class; `http_request_duration_seconds` by handler and method), fed by the edge
    instead of the instrumentator's middleware, which looked each route up a second time.
    Only the two that the alerts and the dashboard read: each metric costs every request its
    label lookups and, with several workers, a write to a shared file.
    """
    requests = prometheus_metrics.requests()
    latency = prometheus_metrics.latency(
        should_include_status=False, buckets=(*_LATENCY_BUCKETS, float("inf"))
    )
    assert requests is not None and latency is not None
    return requests, latency


class Edge:
    """Pure ASGI (no body buffering): binds request_id, adds headers, logs, measures, and turns
    crashes into a 500 problem. Requests with an Origin header go through CORS first."""

    def __init__(self, app: ASGIApp, *, hsts: bool, cors: dict[str, object] | None = None) -> None:
        self.app = app
        self._cors: ASGIApp = CORSMiddleware(app, **cors) if cors else app  # type: ignore[arg-type]
        self._hsts = hsts
        self._metrics = http_metrics()
        # Bound once: the module's lazy logger would bind (and make a logger) on every line.
        # The edge is built at the first request, after create_app configured the logging.
        self._log: structlog.typing.FilteringBoundLogger | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        begin_request()
        request_id, has_origin = _read_headers(scope)
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        response = {"status": 0, "bytes": 0}
        hsts = self._hsts or scope.get("scheme") == "https"
        csp = DOCS_CSP if scope["path"] in DOCS_PATHS else API_CSP

        async def send_edged(message: Message) -> None:
            if message["type"] == "http.response.start":
                response["status"] = message["status"]
                headers = list(message.get("headers", ()))
                # Downloads and /view set their own (a sandboxed policy, nosniff).
                present = {name.lower() for name, _ in headers}
                if b"content-security-policy" not in present:
                    headers.append((b"content-security-policy", csp))
                headers.extend(h for h in _SECURITY_HEADERS if h[0] not in present)
                if hsts:
                    headers.append(_HSTS)
                headers.extend(state.get("response_headers", ()))
                headers.append((b"x-request-id", request_id.encode()))
                message["headers"] = headers
            elif message["type"] == "http.response.body":
                response["bytes"] += len(message.get("body", b""))
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                await (self._cors if has_origin else self.app)(scope, receive, send_edged)
            except Exception:
                log.exception("unhandled_error", path=scope.get("path"))
                if response["status"] == 0:
                    await _send_internal_error(send_edged, request_id)
                    response["status"] = 500
            finally:
                self._finish(scope, response["status"], response["bytes"], started)

    def _finish(self, scope: Scope, status: int, sent: int, started: float) -> None:
        duration = time.perf_counter() - started
        route = scope.get("route")
        template: str | None = getattr(route, "path", None)
        client = scope.get("client")
        if self._log is None:
            self._log = log.bind()
        self._log.info(
            "access",
            method=scope.get("method"),
            route=template,
            path=scope.get("path"),
            status=status,
            duration_ms=round(duration * 1000, 3),
            client_ip=client[0] if client else None,
            bytes_out=sent,
        )
        request = Request(scope)
        if template is None:
            # Refused before routing (401, 429...) or no route: look the template up.
            template = get_route_name(request, False)
        if template in _UNMEASURED:
            return
        info = Info(
            request=request,
            response=None,
            method=scope["method"],
            modified_handler=template or "none",
            modified_status=f"{str(status or 500)[0]}xx",
            modified_duration=duration,
        )
        for metric in self._metrics:
            metric(info)


def _read_headers(scope: Scope) -> tuple[str, bool]:
    """The request id (the client's, if well formed, else a new one) and whether an Origin came."""
    request_id, origin = None, False
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            candidate: str = value.decode("latin-1")
            if _CLIENT_REQUEST_ID.fullmatch(candidate):
                request_id = candidate
        elif name == b"origin":
            origin = True
    return request_id or uuid.uuid4().hex, origin


async def _send_internal_error(send: Send, request_id: str) -> None:
    body = json.dumps(
        {
            "type": "about:blank",
            "title": HTTPStatus.INTERNAL_SERVER_ERROR.phrase,
            "status": 500,
            "detail": "an internal error occurred; the request_id identifies it in the logs",
            "code": "internal_error",
            "request_id": request_id,
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 500,
            "headers": [
                (b"content-type", b"application/problem+json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
