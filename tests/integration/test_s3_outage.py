"""The object store vanishing and coming back, behind a TCP forwarder in front of SeaweedFS.

DESIGN.md §5: an unreachable store is a 503 that stores nothing, /readyz names the bucket and
its endpoint, and the service recovers without a restart. What an upload cut short leaves in the
bucket (a multipart upload its abort could not reach) goes at the next sweep.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import sqlalchemy as sa

from filewallball.adapters.sql import blobs, create_engine, files
from filewallball.container import build_container, close_resources, open_resources
from filewallball.settings import Settings
from tests.conftest import S3_BUCKET
from tests.integration.conftest import ADMIN_KEY, GENEROUS, serve
from tests.integration.test_http_files import assert_problem, post
from tests.s3_server import SeaweedS3
from tests.tcp_proxy import TcpProxy

MiB = 1024 * 1024
# Parts of S3's smallest size: a body of a few MiB is a multipart upload.
PART = 5 * MiB


@pytest.fixture
async def proxy(s3_server: SeaweedS3) -> AsyncIterator[TcpProxy]:
    """A forwarder to the S3 server: stop() cuts every connection and refuses new ones."""
    where = urlsplit(s3_server.endpoint)
    forward = TcpProxy(where.hostname or "127.0.0.1", where.port or 80)
    await forward.start()
    yield forward
    await forward.stop()


@pytest.fixture
def settings(tmp_path: Path, pg_url: str, s3_prefix: str, proxy: TcpProxy) -> Settings:
    """PostgreSQL, and blobs in the test bucket reached through the forwarder."""
    return Settings(
        data_dir=tmp_path,
        database_url=pg_url,
        auto_migrate=True,
        bootstrap_admin_key=ADMIN_KEY,
        s3_bucket=S3_BUCKET,
        s3_endpoint_url=f"http://127.0.0.1:{proxy.port}",
        s3_prefix=s3_prefix,
        s3_part_size_bytes=PART,
        **GENEROUS,  # type: ignore[arg-type]
    )


async def _rows(settings: Settings) -> tuple[list[str], list[str]]:
    """The file ids and the blob hashes the database knows."""
    engine = create_engine(settings.resolved_database_url)
    try:
        async with engine.connect() as connection:
            ids = (await connection.execute(sa.select(files.c.id))).scalars().all()
            shas = (await connection.execute(sa.select(blobs.c.sha256))).scalars().all()
    finally:
        await engine.dispose()
    return sorted(ids), sorted(shas)


async def _ready_again(client: httpx.AsyncClient, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while (ready := await client.get("/readyz")).status_code != 200:
        assert time.monotonic() < deadline, ready.text
        await asyncio.sleep(0.2)


async def _sweep(settings: Settings) -> None:
    """The maintenance job's recovery, for whatever is older than a second (S3's resolution)."""
    await asyncio.sleep(1.1)
    container = build_container(settings)
    await open_resources(container)
    try:
        await container.file_service().recover(temp_older_than_seconds=1)
    finally:
        await close_resources(container)


def _body(size: int) -> bytes:
    return hashlib.sha256(b"outage").digest() * (size // 32)


async def test_the_store_down_is_503_stores_nothing_and_recovers(
    settings: Settings, proxy: TcpProxy, s3_server: SeaweedS3, s3_prefix: str
) -> None:
    async with serve(settings) as client:
        before = await post(client, b"stored before the outage")
        assert before.status_code == 201, before.text
        assert (await client.get("/readyz")).status_code == 200

        await proxy.stop()
        assert_problem(await post(client, b"never kept"), 503, "dependency_unavailable")
        large = await client.put("/upload/large.bin", content=_body(PART + MiB))
        assert_problem(large, 503, "dependency_unavailable")
        ready = await client.get("/readyz")
        assert_problem(ready, 503, "not_ready")
        check = ready.json()["checks"]["blob_storage"]
        assert check["status"] == "failing"
        assert f"S3 bucket '{S3_BUCKET}' at {settings.s3_endpoint_url}" in check["detail"]
        assert ready.json()["checks"]["database"]["status"] == "ok"
        assert (await client.get("/healthz")).status_code == 200

        await proxy.start()
        await _ready_again(client)
        after = await client.put("/upload/large.bin", content=_body(PART + MiB))
        assert after.status_code == 201, after.text
        download = await client.get(f"/download/{before.json()['id']}")
        assert download.content == b"stored before the outage"

    stored = [before.json(), after.json()]
    assert await _rows(settings) == (
        sorted(record["id"] for record in stored),
        sorted(record["sha256"] for record in stored),
    )
    # Nothing of the refused uploads: no object, no temp object, no open multipart upload.
    assert s3_server.keys(s3_prefix) == sorted(
        f"{s3_prefix}blobs/{record['sha256']}" for record in stored
    )
    assert s3_server.multipart_uploads(s3_prefix) == []
    assert not (settings.data_dir / "blobs").exists()


async def test_the_store_cut_mid_upload_leaves_nothing_after_the_sweep(
    settings: Settings, proxy: TcpProxy, s3_server: SeaweedS3, s3_prefix: str
) -> None:
    data = _body(3 * PART)

    async def cut_after_a_part() -> AsyncIterator[bytes]:
        for start in range(0, len(data), MiB):
            if start == PART + MiB:  # a part sent, the next one being filled
                await proxy.stop()
            yield data[start : start + MiB]

    async with serve(settings) as client:
        try:
            response = await client.put("/upload/cut.bin", content=cut_after_a_part())
        except httpx.TransportError:
            pass  # the server may end the connection instead of answering
        else:
            assert_problem(response, 503, "dependency_unavailable")
        assert (await client.get("/files")).json()["items"] == []
        await proxy.start()
        await _ready_again(client)

    await _sweep(settings)
    assert await _rows(settings) == ([], [])
    assert s3_server.keys(s3_prefix) == []
    assert s3_server.multipart_uploads(s3_prefix) == []
