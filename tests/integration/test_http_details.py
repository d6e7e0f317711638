"""The HTTP details careful clients rely on (DESIGN.md §3): record ETags and preconditions,
HEAD wherever GET works, a complete Allow, no partial PUT, readable download names."""

from __future__ import annotations

from datetime import timedelta
from email.utils import format_datetime, parsedate_to_datetime
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import AppFactory, blob_files
from tests.integration.test_http_files import assert_problem, post

# Stored bytes: these run on S3 too (tests/integration/conftest.py).
ON_S3 = True


@pytest.fixture
async def record(client: httpx.AsyncClient) -> dict[str, str]:
    response = await post(client, b"a record to keep", "keep.txt")
    assert response.status_code == 201
    body: dict[str, str] = response.json()
    return body


async def test_a_record_has_an_etag_and_answers_304(
    client: httpx.AsyncClient, record: dict[str, str]
) -> None:
    response = await client.get(f"/files/{record['id']}")
    assert response.status_code == 200
    etag = response.headers["etag"]
    assert etag.startswith('"') and etag.endswith('"') and not etag.startswith("W/")
    assert response.json()["etag"] == etag == record["etag"]
    again = await client.get(f"/files/{record['id']}", headers={"if-none-match": etag})
    assert again.status_code == 304
    assert again.headers["etag"] == etag
    assert again.content == b""
    other = await client.get(f"/files/{record['id']}", headers={"if-none-match": '"nope"'})
    assert other.status_code == 200
    # Another record has another tag; the download's tag (the content hash) is not the record's.
    second = (await post(client, b"another record", "other.txt")).json()
    assert second["etag"] != etag
    assert (await client.head(f"/download/{record['id']}")).headers["etag"] != etag


async def test_delete_with_a_false_if_match_keeps_the_file(
    client: httpx.AsyncClient, record: dict[str, str]
) -> None:
    url = f"/files/{record['id']}"
    for false in ('"stale"', 'W/"' + record["etag"].strip('"') + '"', "malformed"):
        refused = await client.delete(url, headers={"if-match": false})
        assert_problem(refused, 412, "precondition_failed")
    assert (await client.get(url)).status_code == 200
    deleted = await client.delete(url, headers={"if-match": f'"x", {record["etag"]}'})
    assert deleted.status_code == 204
    assert_problem(await client.get(url), 404, "file_not_found")


async def test_delete_if_unmodified_since(
    client: httpx.AsyncClient, record: dict[str, str]
) -> None:
    url = f"/files/{record['id']}"
    created = parsedate_to_datetime(
        (await client.head(f"/download/{record['id']}")).headers["last-modified"]
    )
    before = format_datetime(created - timedelta(seconds=10), usegmt=True)
    assert_problem(
        await client.delete(url, headers={"if-unmodified-since": before}),
        412,
        "precondition_failed",
    )
    after = format_datetime(created + timedelta(seconds=10), usegmt=True)
    assert (await client.delete(url, headers={"if-unmodified-since": after})).status_code == 204


async def test_if_match_star_and_unknown_file(
    client: httpx.AsyncClient, record: dict[str, str]
) -> None:
    assert (
        await client.delete(f"/files/{record['id']}", headers={"if-match": "*"})
    ).status_code == 204
    gone = await client.delete(f"/files/{record['id']}", headers={"if-match": "*"})
    assert_problem(gone, 404, "file_not_found")


async def test_restore_honours_if_match(make_client: AppFactory) -> None:
    async with make_client(trash_retention=3600) as client:
        record = (await post(client, b"to the trash and back")).json()
        assert (await client.delete(f"/files/{record['id']}")).status_code == 204
        trashed = (await client.get("/files", params={"trash": "true"})).json()["items"][0]
        assert trashed["deleted_at"] is not None
        assert trashed["etag"] != record["etag"]  # the trash is a change of the record
        restore = f"/files/{record['id']}/restore"
        assert_problem(
            await client.post(restore, headers={"if-match": record["etag"]}),
            412,
            "precondition_failed",
        )
        restored = await client.post(restore, headers={"if-match": trashed["etag"]})
        assert restored.status_code == 200, restored.text
        assert restored.json()["etag"] == record["etag"]  # back to the version it was


async def test_put_with_content_range_is_refused_and_stores_nothing(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    response = await client.put(
        "/upload/part.bin", content=b"abc", headers={"content-range": "bytes 0-2/10"}
    )
    body = assert_problem(response, 400, "content_range_not_allowed")
    assert "Content-Range" in str(body["detail"])
    assert (await client.get("/files")).json()["items"] == []
    assert blob_files(tmp_path) == []


@pytest.mark.parametrize(
    "path",
    [
        "/files",
        "/files/{id}",
        "/view/{id}",
        "/healthz",
        "/readyz",
        "/admin/keys",
        "/admin/audit",
        "/stats/usage",
        "/files/AAAAAAAAAAAAAAAAAAAAAA",
    ],
)
async def test_head_wherever_get_works(
    client: httpx.AsyncClient, record: dict[str, str], path: str
) -> None:
    url = path.format(id=record["id"])
    got = await client.get(url)
    head = await client.head(url)
    assert head.status_code == got.status_code, (url, head.text)
    assert head.content == b""
    assert head.headers["content-type"] == got.headers["content-type"]
    if path in ("/files/{id}", "/view/{id}"):  # the others carry latencies and counts
        assert head.headers["content-length"] == got.headers["content-length"]
        assert head.headers.get("etag") == got.headers.get("etag")


async def test_405_lists_every_allowed_method(
    client: httpx.AsyncClient, record: dict[str, str]
) -> None:
    response = await client.patch(f"/files/{record['id']}")
    assert_problem(response, 405, "method_not_allowed")
    allowed = {m.strip() for m in response.headers["allow"].split(",")}
    assert allowed == {"GET", "HEAD", "DELETE"}
    upload = await client.delete("/upload")
    assert {m.strip() for m in upload.headers["allow"].split(",")} == {"POST"}


@pytest.mark.parametrize(
    ("name", "fallback"),
    [
        ("résumé 2026.pdf", "resume 2026.pdf"),
        ("данные.txt", "dannye.txt"),
        ("a:b*c?.txt", "a_b_c_.txt"),
    ],
)
async def test_download_names_fall_back_to_a_transliteration(
    client: httpx.AsyncClient, name: str, fallback: str
) -> None:
    record = (await post(client, b"named", name)).json()
    disposition = (await client.head(f"/download/{record['id']}")).headers["content-disposition"]
    assert f'filename="{fallback}"' in disposition
    assert "filename*=UTF-8''" in disposition
