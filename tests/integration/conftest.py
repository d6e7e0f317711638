"""The HTTP stack end to end: the real app on SQLite (embedded) or PostgreSQL + Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from filewallball.entrypoints.http.app import create_app
from filewallball.settings import Settings
from tests.conftest import REDIS_URL, staged_files

AppFactory = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]

# A bootstrap admin key of the right shape (fwb_<12>_<43>), so tests know a working key.
ADMIN_KEY = "fwb_testadmin000_" + "A" * 43
# Tests make many requests per second; the limits are tested on their own.
GENEROUS = {"rate_limit": "100000/minute", "upload_rate_limit": "100000/minute"}


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """Settings for one of the two ways to run (DESIGN.md §2)."""
    if request.param == "sqlite":
        return {"data_dir": tmp_path, "bootstrap_admin_key": ADMIN_KEY, **GENEROUS}
    return {
        "data_dir": tmp_path,
        "bootstrap_admin_key": ADMIN_KEY,
        **GENEROUS,
        "database_url": request.getfixturevalue("pg_url"),
        "redis_url": REDIS_URL,
        "redis_prefix": request.getfixturevalue("redis_prefix"),
        "auto_migrate": True,
    }


@asynccontextmanager
async def serve(
    settings: Settings, *, key: str | None = ADMIN_KEY, client_ip: str = "127.0.0.1"
) -> AsyncIterator[httpx.AsyncClient]:
    """The app on an in-process transport; requests carry `key` unless it is None."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=(client_ip, 50000))
        headers = {"authorization": f"Bearer {key}"} if key else {}
        async with httpx.AsyncClient(
            transport=transport, base_url="http://testserver", headers=headers
        ) as client:
            yield client


@pytest.fixture
def make_client(backend: dict[str, Any]) -> AppFactory:
    """Start the app with the backend's settings plus overrides."""

    def factory(
        *, key: str | None = ADMIN_KEY, client_ip: str = "127.0.0.1", **overrides: Any
    ) -> AbstractAsyncContextManager[httpx.AsyncClient]:
        return serve(Settings(**{**backend, **overrides}), key=key, client_ip=client_ip)

    return factory


@pytest.fixture
async def client(make_client: AppFactory) -> AsyncIterator[httpx.AsyncClient]:
    async with make_client(max_upload_bytes=1024 * 1024, preview_max_bytes=100) as c:
        yield c


def blob_files(data_dir: Path) -> list[Path]:
    root = data_dir / "blobs"
    return [p for p in root.rglob("*") if p.is_file() and ".tmp" not in p.parts]


def temp_files(data_dir: Path) -> list[Path]:
    return staged_files(data_dir / "blobs" / ".tmp")
