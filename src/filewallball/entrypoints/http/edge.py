"""The one ASGI layer around the routes: request context, security headers, the access line.

Every layer of middleware wraps `send` and costs each request a few function calls per message;
this one does the work of four (request context, security headers, admission's rate headers,
prometheus-fastapi-instrumentator's middleware, see telemetry.py), with one wrapper. Admission
(admission.py) and CORS sit inside it and wrap nothing.
"""

from __future__ import annotations

import re
import time
import uuid

import structlog
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from filewallball.domain.security import Network
from filewallball.entrypoints.http.context import RequestContext, open_context
from filewallball.entrypoints.http.errors import internal_error
from filewallball.entrypoints.http.routes.paths import is_docs
from filewallball.entrypoints.http.telemetry import RequestMetrics
from filewallball.request_scope import begin_request

_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")

API_CSP = b"default-src 'none'; frame-ancestors 'none'"


def docs_csp(script_nonce: str | None = None) -> bytes:
    """The interactive docs' policy: everything from this origin, nothing from anywhere else.

    Swagger UI's page starts it with an inline script, let in by the page's nonce alone;
    ReDoc and Swagger UI style elements inline (styled-components, React), ReDoc searches in a
    blob: worker and draws icons as data: images.
    """
    nonce = f" 'nonce-{script_nonce}'" if script_nonce else ""
    return (
        f"default-src 'none'; script-src 'self'{nonce}; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; worker-src blob:; frame-ancestors 'none'"
    ).encode()


DOCS_CSP = docs_csp()
_SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
)
_HSTS = (b"strict-transport-security", b"max-age=31536000; includeSubDomains")

log = structlog.get_logger("filewallball.access")


class Edge:
    """Pure ASGI (no body buffering): opens the request's context, binds request_id, adds
    headers, logs, measures, and turns crashes into a 500 problem. Requests with an Origin
    header go through CORS first."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        hsts: bool,
        trusted_proxies: tuple[Network, ...] = (),
        cors: dict[str, object] | None = None,
    ) -> None:
        self.app = app
        self._cors: ASGIApp = CORSMiddleware(app, **cors) if cors else app  # type: ignore[arg-type]
        self._hsts = hsts
        self._trusted_proxies = trusted_proxies
        self._metrics = RequestMetrics()
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
        context = open_context(scope, request_id=request_id, trusted_proxies=self._trusted_proxies)
        status = sent = 0
        hsts = self._hsts or scope.get("scheme") == "https"
        csp = DOCS_CSP if is_docs(scope["path"]) else API_CSP
        head = scope["method"] == "HEAD"

        async def send_edged(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", ()))
                # Downloads and /view set their own (a sandboxed policy, nosniff).
                present = {name.lower() for name, _ in headers}
                if b"content-security-policy" not in present:
                    headers.append((b"content-security-policy", csp))
                headers.extend(h for h in _SECURITY_HEADERS if h[0] not in present)
                if hsts:
                    headers.append(_HSTS)
                headers.extend(context.response_headers)
                headers.append((b"x-request-id", request_id.encode()))
                message["headers"] = headers
            elif message["type"] == "http.response.body":
                if head and message.get("body"):
                    # A GET route answering HEAD: its headers (Content-Length included), no body.
                    message = {**message, "body": b""}
                sent += len(message.get("body", b""))
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                await (self._cors if has_origin else self.app)(scope, receive, send_edged)
            except Exception as error:
                log.exception("unhandled_error", path=scope.get("path"))
                # Once the response has started, a second start would break the protocol: the
                # client sees the answer cut short, and the log line says why.
                if status == 0:
                    crash = await internal_error(Request(scope), error)
                    await crash(scope, receive, send_edged)
            finally:
                self._finish(scope, context, status, sent, started)

    def _finish(
        self, scope: Scope, context: RequestContext, status: int, sent: int, started: float
    ) -> None:
        duration = time.perf_counter() - started
        route = scope.get("route")
        template: str | None = getattr(route, "path", None)
        principal = context.principal
        if self._log is None:
            self._log = log.bind()
        self._log.info(
            "access",
            method=scope.get("method"),
            route=template,
            path=scope.get("path"),
            status=status,
            duration_ms=round(duration * 1000, 3),
            # Who asked: the client by the trusted-proxy rules, and the key it was admitted with.
            client_ip=context.client_ip,
            key_id=principal.key_id if principal else None,
            bytes_out=sent,
        )
        self._metrics.observe(scope, template, status, duration)


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
