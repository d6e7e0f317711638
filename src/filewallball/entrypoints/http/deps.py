"""What handlers take from the composition root, via FastAPI dependencies."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from filewallball.container import Container
from filewallball.domain.services import FileService


def container(request: Request) -> Container:
    value: Container = request.app.state.container
    return value


def file_service(request: Request) -> FileService:
    service: FileService = container(request).file_service()
    return service


def base_url(request: Request) -> str:
    """Absolute URLs start here: FWB_PUBLIC_BASE_URL, else the request's own base URL."""
    configured: str | None = container(request).settings().public_base_url
    return configured or str(request.base_url).rstrip("/")


Files = Annotated[FileService, Depends(file_service)]
BaseUrl = Annotated[str, Depends(base_url)]
