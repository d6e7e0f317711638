"""Presigned downloads (FWB_S3_PRESIGNED_DOWNLOADS) on PostgreSQL + Redis + a real S3 bucket:
a whole-file GET answers 302 to the object store only after authentication, access and audit;
everything else (ranges, conditionals, HEAD) is answered by FileWallBall as before."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from filewallball.settings import Settings
from tests.conftest import REDIS_URL
from tests.integration.conftest import ADMIN_KEY, GENEROUS, serve

DATA = bytes(range(256)) * 4000  # 1,024,000 bytes


@pytest.fixture
def settings(
    tmp_path: Path, pg_url: str, redis_prefix: str, s3_settings: dict[str, str]
) -> Settings:
    return Settings(
        data_dir=tmp_path,
        bootstrap_admin_key=ADMIN_KEY,
        database_url=pg_url,
        redis_url=REDIS_URL,
        redis_prefix=redis_prefix,
        auto_migrate=True,
        s3_presigned_downloads=True,
        s3_presign_expires_seconds=120,
        **GENEROUS,
        **s3_settings,
    )


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(settings) as c:
        yield c


async def _upload(client: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    response = await client.post(
        "/upload",
        files={"file": ("résumé 2026.bin", DATA, "application/octet-stream")},
        data=fields,
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


async def test_a_whole_file_get_redirects_to_a_presigned_url(client: httpx.AsyncClient) -> None:
    record = await _upload(client)
    response = await client.get(f"/download/{record['id']}")
    assert response.status_code == 302
    assert response.headers["cache-control"] == "private, no-store"
    location = response.headers["location"]
    query = parse_qs(urlsplit(location).query)
    assert query["X-Amz-Expires"] == ["120"]
    assert urlsplit(location).path.endswith(f"/blobs/{record['sha256']}")

    async with httpx.AsyncClient() as outside:  # no key: the URL is the authorisation
        fetched = await outside.get(location)
    assert fetched.status_code == 200
    assert fetched.content == DATA
    assert fetched.headers["content-disposition"] == (
        "attachment; filename=\"resume 2026.bin\"; filename*=UTF-8''r%C3%A9sum%C3%A9%202026.bin"
    )
    assert fetched.headers["content-type"] == record["content_type"]

    # Audited as a download of the whole file, before the client fetched it.
    audit = (await client.get("/admin/audit", params={"action": "file.download"})).json()["items"]
    assert [(e["target"], e["detail"]) for e in audit] == [(record["id"], "presigned")]


async def test_ranges_conditionals_and_head_are_answered_here(client: httpx.AsyncClient) -> None:
    record = await _upload(client)
    url = f"/download/{record['id']}"
    ranged = await client.get(url, headers={"Range": "bytes=1000-1999"})
    assert ranged.status_code == 206
    assert ranged.content == DATA[1000:2000]
    etag = (await client.head(url)).headers["etag"]
    assert (await client.get(url, headers={"If-None-Match": etag})).status_code == 304
    head = await client.head(url)
    assert head.status_code == 200
    assert head.headers["content-length"] == str(len(DATA))


async def test_no_redirect_without_access(client: httpx.AsyncClient, settings: Settings) -> None:
    record = await _upload(client)
    async with serve(settings, key=None) as anonymous:
        refused = await anonymous.get(f"/download/{record['id']}")
    assert refused.status_code == 401
    assert "location" not in refused.headers
    missing = await client.get("/download/" + "0" * 26)
    assert missing.status_code in (400, 404)
    assert "location" not in missing.headers
