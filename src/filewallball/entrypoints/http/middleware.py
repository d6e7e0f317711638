"""Request context: a request_id on every log line and response, one access event per request."""

from __future__ import annotations

import json
import re
import time
import uuid
from http import HTTPStatus

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")

log = structlog.get_logger("filewallball.access")


class RequestContextMiddleware:
    """Pure ASGI (no body buffering): binds request_id, logs access, turns crashes into a 500."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        response = {"status": 0, "bytes": 0}
        header = (b"x-request-id", request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                response["status"] = message["status"]
                message["headers"] = [*message.get("headers", []), header]
            elif message["type"] == "http.response.body":
                response["bytes"] += len(message.get("body", b""))
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                await self.app(scope, receive, send_with_id)
            except Exception:
                log.exception("unhandled_error", path=scope.get("path"))
                if response["status"] == 0:
                    await _send_internal_error(send_with_id, request_id)
            finally:
                route = scope.get("route")
                client = scope.get("client")
                log.info(
                    "access",
                    method=scope.get("method"),
                    route=getattr(route, "path", None),
                    path=scope.get("path"),
                    status=response["status"],
                    duration_ms=round((time.perf_counter() - started) * 1000, 3),
                    client_ip=client[0] if client else None,
                    bytes_out=response["bytes"],
                )


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            candidate: str = value.decode("latin-1")
            if _CLIENT_REQUEST_ID.fullmatch(candidate):
                return candidate
    return uuid.uuid4().hex


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
