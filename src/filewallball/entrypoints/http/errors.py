"""The one place that maps errors to HTTP: RFC 9457 problem details with `code` and `request_id`.

Every problem+json body is rendered here: domain errors (raised in a route or met by
admission), the HTTP layer's own (HttpProblem), invalid parameters, Starlette's 404 and 405,
the 500 of a crash and /readyz's 503. Every refusal (401, 403, 429) is audited here, once.
"""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import Scope

from filewallball.domain import errors
from filewallball.domain.access import Auditor
from filewallball.domain.security import Outcome
from filewallball.entrypoints.http.context import context_of

PROBLEM_JSON = "application/problem+json"

_STATUS: dict[type[errors.FileWallBallError], int] = {
    errors.InvalidRequest: 400,
    errors.DigestMismatch: 400,
    errors.Unauthenticated: 401,
    errors.AccessDenied: 403,
    errors.FileNotFound: 404,
    errors.UploadNotFound: 404,
    errors.UploadExpired: 410,
    errors.OffsetMismatch: 409,
    errors.UploadLocked: 423,
    errors.ChecksumMismatch: 460,  # tus 1.0 checksum extension
    errors.LengthExceeded: 413,
    errors.TooManyOpenUploads: 429,
    errors.ResourceNotFound: 404,
    errors.Conflict: 409,
    errors.PreconditionFailed: 412,
    errors.FileTooLarge: 413,
    errors.QuotaExceeded: 413,
    errors.TypeNotAllowed: 415,
    errors.NotPreviewable: 415,
    errors.NotAnImage: 415,
    errors.MalwareDetected: 422,
    errors.ThumbnailFailed: 422,
    errors.RateLimited: 429,
    errors.DependencyUnavailable: 503,
    errors.StorageFull: 507,
}
# Statuses of protocols the standard library does not name.
_TITLES = {460: "Checksum Mismatch"}
# Refusals of the caller: each is an audit entry (DESIGN.md §4, every denied request).
_DENIALS = frozenset({401, 403, 429})
_WWW_AUTHENTICATE = {"WWW-Authenticate": 'Bearer realm="filewallball"'}
_RETRY_SOON = {"Retry-After": "5"}

log = structlog.get_logger("filewallball.http")


class HttpProblem(Exception):
    """A protocol-level failure decided by the HTTP layer itself (416, 412, ...)."""

    def __init__(
        self, status: int, code: str, detail: str, *, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers or {}


def status_for(error: errors.FileWallBallError) -> int:
    for cls in type(error).__mro__:
        if cls in _STATUS:
            return _STATUS[cls]
    return 400


def problem(
    status: int,
    code: str,
    detail: str,
    *,
    scope: Scope,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """The problem+json answer to the request of `scope`: `instance` is its path, and
    `request_id` finds its log lines."""
    path = str(scope.get("path", ""))
    if path == "/tus" or path.startswith("/tus/"):
        # tus 1.0: every answer of a tus endpoint but OPTIONS carries the version it speaks.
        headers = {**(headers or {}), "Tus-Resumable": "1.0.0"}
    body = {
        "type": "about:blank",
        "title": status_title(status),
        "status": status,
        "detail": detail,
        "instance": scope.get("path"),
        "code": code,
        "request_id": _request_id(scope),
        **extra,
    }
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


def status_title(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return _TITLES.get(status, "Error")


def _request_id(scope: Scope) -> str | None:
    try:
        return context_of(scope).request_id
    except KeyError:  # a crash in the edge itself, before it opened the context
        return None


async def problem_for(
    error: errors.FileWallBallError, scope: Scope, auditor: Callable[[], Auditor]
) -> JSONResponse:
    """The answer to a domain error, from a route or from admission; a refusal audited first."""
    status = status_for(error)
    if status in _DENIALS:
        await _audit_denial(auditor(), error, scope)
    if isinstance(error, errors.Unauthenticated):
        headers: dict[str, str] | None = _WWW_AUTHENTICATE
    elif isinstance(error, errors.RateLimited):
        headers = {"Retry-After": str(error.retry_after_seconds)}
    else:
        headers = _RETRY_SOON if status == 503 else None
    return problem(status, error.code, error.detail, scope=scope, headers=headers)


async def _audit_denial(auditor: Auditor, error: errors.FileWallBallError, scope: Scope) -> None:
    """The audit entry of a refused request: by admission (no principal yet) or by a use case."""
    context = context_of(scope)
    try:
        await auditor.record(
            context.principal,
            "request.denied",
            Outcome.DENIED,
            target=f"{scope['method']} {scope['path']}"[:255],
            detail=error.code,
            client_ip=context.client_ip,
            request_id=context.request_id,
        )
    except errors.FileWallBallError as audit_error:
        # The refusal stands: an audit outage must not turn it into a 500.
        log.warning("audit_unavailable", reason=audit_error.detail)


def not_ready(checks: dict[str, Any], *, scope: Scope) -> JSONResponse:
    """/readyz's 503: a problem (numeric `status`, as RFC 9457 has it) with every check."""
    failing = sorted(name for name, check in checks.items() if check["status"] != "ok")
    return problem(
        503,
        "not_ready",
        f"a required dependency is failing: {', '.join(failing)}",
        scope=scope,
        checks=checks,
    )


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    """The 500 of a crash: the edge answers it for crashes below the edge (with the headers
    every answer gets), Starlette's server-error middleware for a crash in the edge itself."""
    return problem(
        500,
        "internal_error",
        "an internal error occurred; the request_id identifies it in the logs",
        scope=request.scope,
    )


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, errors.FileWallBallError)
    detail = exc.diagnosis if isinstance(exc, errors.DependencyUnavailable) else exc.detail
    log.info("request_failed", code=exc.code, status=status_for(exc), detail=detail)
    return await problem_for(exc, request.scope, request.app.state.container.auditor)


async def _http_problem(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HttpProblem)
    return problem(exc.status, exc.code, exc.detail, scope=request.scope, headers=exc.headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    invalid = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", ""))} for e in exc.errors()]
    fields = ", ".join(".".join(str(p) for p in item["loc"]) for item in invalid)
    return problem(
        400,
        "invalid_request",
        f"invalid request parameters: {fields}",
        scope=request.scope,
        errors=invalid,
    )


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


async def _starlette_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, HTTPStatus(exc.status_code).phrase.lower())
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        # Starlette names the methods of the first route on the path only.
        headers["Allow"] = ", ".join(_allowed_methods(request))
    return problem(
        exc.status_code,
        code.replace(" ", "_"),
        str(exc.detail),
        scope=request.scope,
        headers=headers,
    )


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route takes on the request's path (RFC 9110 §15.5.6): asked of the
    routes themselves, method by method (FastAPI nests included routers)."""
    return [
        method
        for method in _METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL
            for route in request.app.routes
        )
    ]


def install_error_handlers(app: FastAPI) -> None:
    # 500: Starlette's server-error middleware takes it (the handler of last resort).
    app.add_exception_handler(500, internal_error)
    app.add_exception_handler(errors.FileWallBallError, _domain_error)
    app.add_exception_handler(HttpProblem, _http_problem)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _starlette_error)
