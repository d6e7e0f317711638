"""The HTTP stack end to end: the real app on SQLite (embedded) or PostgreSQL + Redis, and
for the modules that set ON_S3 also on PostgreSQL + Redis + S3 (a real SeaweedFS server)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from filewallball.entrypoints.http.app import create_app
from filewallball.settings import Settings
from tests.conftest import REDIS_URL, S3_BUCKET, staged_files
from tests.s3_server import SeaweedS3

AppFactory = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]

# A bootstrap admin key of the right shape (fwb_<12>_<43>), so tests know a working key.
ADMIN_KEY = "fwb_testadmin000_" + "A" * 43
# Tests make many requests per second; the limits are tested on their own.
GENEROUS = {"rate_limit": "100000/minute", "upload_rate_limit": "100000/minute"}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test that takes `backend` runs on SQLite and PostgreSQL; in a module with
    `ON_S3 = True` (what touches stored bytes) on S3 too. A test listed in the module's
    `PROTOCOL_ONLY` checks what no backend changes (header parsing, the protocol's answers; the
    repositories have contract suites of their own): it runs on SQLite only."""
    if "backend" in metafunc.fixturenames:
        on_s3 = getattr(metafunc.module, "ON_S3", False)
        names = ["sqlite", "postgres", *(["s3"] if on_s3 else [])]
        if metafunc.function.__name__ in getattr(metafunc.module, "PROTOCOL_ONLY", ()):
            names = ["sqlite"]
        metafunc.parametrize("backend", names, indirect=True)


# The data folders of the tests running on S3, and where their blobs are.
_ON_S3: dict[Path, tuple[SeaweedS3, str]] = {}


@pytest.fixture
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Settings for one of the ways to run (DESIGN.md §2, §5)."""
    if request.param == "sqlite":
        yield {"data_dir": tmp_path, "bootstrap_admin_key": ADMIN_KEY, **GENEROUS}
        return
    settings = {
        "data_dir": tmp_path,
        "bootstrap_admin_key": ADMIN_KEY,
        **GENEROUS,
        "database_url": request.getfixturevalue("pg_url"),
        "redis_url": REDIS_URL,
        "redis_prefix": request.getfixturevalue("redis_prefix"),
        "auto_migrate": True,
    }
    if request.param == "postgres":
        yield settings
        return
    s3: dict[str, str] = request.getfixturevalue("s3_settings")
    _ON_S3[tmp_path] = (request.getfixturevalue("s3_server"), s3["s3_prefix"])
    try:
        yield {**settings, **s3}
    finally:
        del _ON_S3[tmp_path]


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


class S3Object:
    """A stored object, with the part of Path's interface the tests use."""

    def __init__(self, server: SeaweedS3, key: str) -> None:
        self.server, self.key, self.name = server, key, key.rsplit("/", 1)[-1]

    def read_bytes(self) -> bytes:
        return bytes(self.server.client().get_object(Bucket=S3_BUCKET, Key=self.key)["Body"].read())

    def write_bytes(self, data: bytes) -> None:
        self.server.client().put_object(Bucket=S3_BUCKET, Key=self.key, Body=data)

    def __repr__(self) -> str:
        return f"S3Object({self.key!r})"


def _s3_objects(data_dir: Path, folder: str) -> list[S3Object] | None:
    if data_dir not in _ON_S3:
        return None
    # With S3 nothing of a blob is written to the local disk.
    assert not (data_dir / "blobs").exists(), "a blob folder on the local disk with S3 on"
    server, prefix = _ON_S3[data_dir]
    found = [S3Object(server, key) for key in server.keys(f"{prefix}{folder}/")]
    if folder == "tmp":
        found += [S3Object(server, key) for key in server.multipart_uploads(f"{prefix}tmp/")]
    return found


def blob_files(data_dir: Path) -> list[Any]:
    """The stored blobs (and renditions) of the server on `data_dir`: files, or S3 objects."""
    objects = _s3_objects(data_dir, "blobs")
    if objects is not None:
        return objects
    root = data_dir / "blobs"
    # Not staged uploads (.tmp), nor resumable uploads' segments (.tus).
    return [p for p in root.rglob("*") if p.is_file() and not {".tmp", ".tus"} & set(p.parts)]


def temp_files(data_dir: Path) -> list[Any]:
    """What is staged, not yet published: temp files, or temp objects and multipart uploads."""
    objects = _s3_objects(data_dir, "tmp")
    if objects is not None:
        return objects
    return staged_files(data_dir / "blobs" / ".tmp")
