"""The one place that maps errors to HTTP: RFC 9457 problem details with `code` and `request_id`."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

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
    errors.ResourceNotFound: 404,
    errors.Conflict: 409,
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
    request_id: str | None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "code": code,
        "request_id": request_id,
        **extra,
    }
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


def request_id_of(request: Request) -> str:
    return context_of(request.scope).request_id


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, errors.FileWallBallError)
    status = status_for(exc)
    headers = {"Retry-After": "5"} if status == 503 else None
    log.info("request_failed", code=exc.code, status=status, detail=exc.detail)
    if isinstance(exc, errors.AccessDenied):
        # A role refused inside a use case: the gate never saw it, so audit it here.
        principal = context_of(request.scope).principal
        auditor: Auditor = request.app.state.container.auditor()
        target = f"{request.method} {request.url.path}"[:255]
        try:
            await auditor.record(
                principal, "request.denied", Outcome.DENIED, target=target, detail=exc.code
            )
        except errors.FileWallBallError as audit_error:
            log.warning("audit_unavailable", reason=audit_error.detail)
    return problem(status, exc.code, exc.detail, request_id=request_id_of(request), headers=headers)


async def _http_problem(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HttpProblem)
    return problem(
        exc.status, exc.code, exc.detail, request_id=request_id_of(request), headers=exc.headers
    )


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    invalid = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", ""))} for e in exc.errors()]
    fields = ", ".join(".".join(str(p) for p in item["loc"]) for item in invalid)
    return problem(
        400,
        "invalid_request",
        f"invalid request parameters: {fields}",
        request_id=request_id_of(request),
        errors=invalid,
    )


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


async def _starlette_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, HTTPStatus(exc.status_code).phrase.lower())
    return problem(
        exc.status_code,
        code.replace(" ", "_"),
        str(exc.detail),
        request_id=request_id_of(request),
        headers=dict(exc.headers or {}),
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(errors.FileWallBallError, _domain_error)
    app.add_exception_handler(HttpProblem, _http_problem)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _starlette_error)
