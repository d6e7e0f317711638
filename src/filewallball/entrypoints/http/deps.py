"""What handlers take from the composition root, via FastAPI dependencies.

Dependencies are `async def` although they never await: FastAPI runs a plain `def` dependency
in a worker thread, a hop that costs more than the dependency itself.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any

from fastapi import Depends, Request

from filewallball.container import Container
from filewallball.domain.access import AccessService, Auditor
from filewallball.domain.errors import Unauthenticated
from filewallball.domain.security import Principal
from filewallball.domain.services import FileService
from filewallball.domain.thumbnails import ThumbnailService
from filewallball.entrypoints.http.context import context_of


def container(request: Request) -> Container:
    value: Container = request.app.state.container
    return value


async def file_service(request: Request) -> FileService:
    service: FileService = container(request).file_service()
    return service


def base_url(request: Request) -> str:
    configured: str | None = container(request).settings().public_base_url
    if configured:
        return configured
    scope = request.scope
    host = next((value for name, value in scope["headers"] if name == b"host"), None)
    root = scope.get("app_root_path", scope.get("root_path", ""))
    return _request_base_url(scope["scheme"], host, scope.get("server"), root)


@functools.lru_cache(maxsize=256)
def _request_base_url(
    scheme: str, host: bytes | None, server: tuple[str, int] | None, root_path: str
) -> str:
    """Starlette's request.base_url, made once per origin rather than once per request."""
    headers = [(b"host", host)] if host is not None else []
    scope: dict[str, Any] = {"type": "http", "scheme": scheme, "server": server}
    scope |= {"headers": headers, "path": "", "root_path": root_path, "query_string": b""}
    return str(Request(scope).base_url).rstrip("/")


def _principal(request: Request) -> Principal:
    value = context_of(request.scope).principal
    if value is None:
        raise Unauthenticated("an API key is required: Authorization: Bearer <key>")
    return value


async def principal(request: Request) -> Principal:
    """The caller admission admitted (every route but the probes has one)."""
    return _principal(request)


class FileCall:
    """What a file route needs, as one dependency: FastAPI charges each one to every request."""

    __slots__ = ("_request", "caller", "files")

    def __init__(self, request: Request) -> None:
        self._request = request
        self.files: FileService = container(request).file_service()
        self.caller = _principal(request)

    @property
    def base(self) -> str:
        """Absolute URLs start here: FWB_PUBLIC_BASE_URL, else the request's own base URL."""
        return base_url(self._request)


async def file_call(request: Request) -> FileCall:
    return FileCall(request)


async def access_service(request: Request) -> AccessService:
    service: AccessService = container(request).access_service()
    return service


async def auditor(request: Request) -> Auditor:
    value: Auditor = container(request).auditor()
    return value


async def thumbnail_service(request: Request) -> ThumbnailService:
    service: ThumbnailService = container(request).thumbnail_service()
    return service


Files = Annotated[FileService, Depends(file_service)]
FileRequest = Annotated[FileCall, Depends(file_call)]
Thumbnails = Annotated[ThumbnailService, Depends(thumbnail_service)]
Access = Annotated[AccessService, Depends(access_service)]
Audit = Annotated[Auditor, Depends(auditor)]
Caller = Annotated[Principal, Depends(principal)]
