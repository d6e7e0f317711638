"""Upload, record, list and delete through the real HTTP stack, on both backends."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from pathlib import Path
from urllib.parse import quote, unquote

import httpx
import pytest

from tests.integration.conftest import AppFactory, blob_files, temp_files

# Stored bytes: these run on S3 too (tests/integration/conftest.py).
ON_S3 = True

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00\x00"


async def post(
    client: httpx.AsyncClient, data: bytes, name: str = "a.txt", **form: str
) -> httpx.Response:
    return await client.post("/upload", files={"file": (name, data)}, data=form)


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status
    assert body["code"] == code
    assert body["request_id"] == response.headers["x-request-id"]
    assert body["instance"] == response.request.url.path
    assert body["detail"]
    return body


async def test_upload_returns_the_record_with_absolute_urls(client: httpx.AsyncClient) -> None:
    response = await post(client, b"hello world\n", "hello.txt")
    assert response.status_code == 201, response.text
    record = response.json()
    assert response.headers["location"] == f"/files/{record['id']}"
    assert record["filename"] == "hello.txt"
    assert record["size"] == 12
    assert record["content_type"] == "text/plain"
    assert record["sha256"] == hashlib.sha256(b"hello world\n").hexdigest()
    assert record["visibility"] == "private"
    assert record["scan_status"] == "skipped"
    assert record["urls"] == {
        "self": f"http://testserver/files/{record['id']}",
        "download": f"http://testserver/download/{record['id']}",
        "view": f"http://testserver/view/{record['id']}",
        "thumbnail": None,
    }
    fetched = await client.get(f"/files/{record['id']}")
    assert fetched.status_code == 200
    assert fetched.json() == record


async def test_public_base_url_is_used(make_client: AppFactory) -> None:
    async with make_client(public_base_url="https://files.example.org/") as client:
        record = (await post(client, PNG, "p.png")).json()
    assert record["urls"]["self"] == f"https://files.example.org/files/{record['id']}"
    assert record["urls"]["view"] is None
    assert record["content_type"] == "image/png"


async def test_put_raw_body(client: httpx.AsyncClient) -> None:
    response = await client.put("/upload/report%20v2.txt?visibility=public", content=b"raw bytes")
    assert response.status_code == 201, response.text
    record = response.json()
    assert record["filename"] == "report v2.txt"
    assert record["visibility"] == "public"
    download = await client.get(f"/download/{record['id']}")
    assert download.content == b"raw bytes"


async def test_visibility_field_before_or_after_the_file(client: httpx.AsyncClient) -> None:
    after = await client.post(
        "/upload",
        content=(
            b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.txt"\r\n\r\n'
            b'data\r\n--b\r\nContent-Disposition: form-data; name="visibility"\r\n\r\n'
            b"public\r\n--b--\r\n"
        ),
        headers={"content-type": "multipart/form-data; boundary=b"},
    )
    assert after.status_code == 201, after.text
    assert after.json()["visibility"] == "public"
    before = await post(client, b"x", visibility="public")
    assert before.json()["visibility"] == "public"
    bad = await post(client, b"x", visibility="everyone")
    assert_problem(bad, 400, "invalid_visibility")


async def test_empty_file_is_accepted(client: httpx.AsyncClient) -> None:
    response = await post(client, b"", "empty.bin")
    assert response.status_code == 201, response.text
    record = response.json()
    assert record["size"] == 0
    download = await client.get(f"/download/{record['id']}")
    assert download.status_code == 200
    assert download.content == b""
    assert download.headers["content-length"] == "0"


async def test_missing_file_field(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/upload", data={"visibility": "public"}, files={"other": ("a", b"x")}
    )
    assert_problem(response, 400, "missing_file")


async def test_not_multipart(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/upload", content=b"just bytes", headers={"content-type": "text/plain"}
    )
    assert_problem(response, 400, "expected_multipart")


async def test_two_files_in_one_form(client: httpx.AsyncClient, tmp_path: Path) -> None:
    response = await client.post("/upload", files=[("file", ("a", b"1")), ("file", ("b", b"2"))])
    assert_problem(response, 400, "multiple_files")
    assert blob_files(tmp_path) == []


@pytest.mark.parametrize(
    "body",
    [
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n\r\npartial da',
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n\r\nall\r\n--b',
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n\r\nall\r\n--b\r\n',
        b"garbage that is not multipart at all",
    ],
)
async def test_truncated_or_malformed_multipart_stores_nothing(
    client: httpx.AsyncClient, tmp_path: Path, body: bytes
) -> None:
    response = await client.post(
        "/upload", content=body, headers={"content-type": "multipart/form-data; boundary=b"}
    )
    assert response.status_code == 400, response.text
    assert response.json()["code"] in {"truncated_body", "invalid_multipart", "missing_file"}
    assert blob_files(tmp_path) == []
    assert temp_files(tmp_path) == []
    assert (await client.get("/files")).json()["items"] == []


async def test_size_limit_boundary(make_client: AppFactory, tmp_path: Path) -> None:
    async with make_client(max_upload_bytes=1000) as client:
        exact = await post(client, b"x" * 1000)
        assert exact.status_code == 201, exact.text
        over = await post(client, b"x" * 1001)
        assert_problem(over, 413, "file_too_large")
        raw_over = await client.put("/upload/x", content=b"x" * 1001)
        assert_problem(raw_over, 413, "file_too_large")
        assert len((await client.get("/files")).json()["items"]) == 1
    assert len(blob_files(tmp_path)) == 1
    assert temp_files(tmp_path) == []


@pytest.mark.parametrize(
    ("hostile", "stored"),
    [
        ("../../etc/passwd", ".._.._etc_passwd"),
        ("..\\..\\windows\\system.ini", ".._.._windows_system.ini"),
        ("nul\x00byte.txt", "nulbyte.txt"),
        ("crlf\r\nInjected: yes.txt", "crlfInjected: yes.txt"),
        ("rtl\u202egnp.exe", "rtlgnp.exe"),
        ("..", "unnamed"),
        ("名前 ملف.txt", "名前 ملف.txt"),
    ],
)
async def test_hostile_filenames_are_sanitised(
    client: httpx.AsyncClient, tmp_path: Path, hostile: str, stored: str
) -> None:
    if hostile in (".", ".."):  # clients resolve dot segments in a URL path: use the form
        response = await post(client, b"data", hostile)
    else:
        response = await client.put("/upload/" + quote(hostile, safe=""), content=b"data")
    assert response.status_code == 201, response.text
    record = response.json()
    assert record["filename"] == stored
    download = await client.get(record["urls"]["download"])
    disposition = download.headers["content-disposition"]
    assert disposition.startswith('attachment; filename="')
    assert "\r" not in disposition and "\n" not in disposition
    assert unquote(disposition.split("filename*=UTF-8''")[1]) == stored
    assert all(".." not in p.name for p in blob_files(tmp_path))


async def test_multipart_hostile_filename_of_1000_chars(client: httpx.AsyncClient) -> None:
    response = await post(client, b"data", "a" * 1000 + ".txt")
    assert response.status_code == 201
    name = response.json()["filename"]
    assert len(name.encode()) <= 255 and name.endswith(".txt")


async def test_content_digest_is_verified(client: httpx.AsyncClient, tmp_path: Path) -> None:
    data = b"checked bytes"
    good = "sha-256=:" + base64.b64encode(hashlib.sha256(data).digest()).decode() + ":"
    bad = "sha-256=:" + base64.b64encode(hashlib.sha256(b"other").digest()).decode() + ":"
    ok = await client.put("/upload/a.txt", content=data, headers={"content-digest": good})
    assert ok.status_code == 201
    mismatch = await client.put("/upload/a.txt", content=data, headers={"content-digest": bad})
    assert_problem(mismatch, 400, "digest_mismatch")
    malformed = await client.put(
        "/upload/a.txt", content=data, headers={"content-digest": "sha-256=abc"}
    )
    assert_problem(malformed, 400, "invalid_digest")
    # For multipart, Content-Digest is the digest of the whole request body (RFC 9530).
    request = client.build_request("POST", "/upload", files={"file": ("a.txt", data)})
    body = request.read()
    body_digest = "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode() + ":"
    request.headers["content-digest"] = body_digest
    assert (await client.send(request)).status_code == 201
    request = client.build_request("POST", "/upload", files={"file": ("a.txt", data)})
    request.headers["content-digest"] = bad
    assert_problem(await client.send(request), 400, "digest_mismatch")
    assert len(blob_files(tmp_path)) == 1
    assert temp_files(tmp_path) == []


async def test_multipart_part_digest(client: httpx.AsyncClient) -> None:
    bad = base64.b64encode(hashlib.sha256(b"other").digest()).decode()
    body = (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n'
        b"Content-Digest: sha-256=:" + bad.encode() + b":\r\n\r\ndata\r\n--b--\r\n"
    )
    response = await client.post(
        "/upload", content=body, headers={"content-type": "multipart/form-data; boundary=b"}
    )
    assert_problem(response, 400, "digest_mismatch")


async def test_type_allow_and_deny_lists(make_client: AppFactory) -> None:
    async with make_client(denied_types=["image/*"]) as client:
        assert_problem(await post(client, PNG, "x.png"), 415, "type_not_allowed")
        assert (await post(client, b"text")).status_code == 201
    async with make_client(allowed_types=["image/png"]) as client:
        assert (await post(client, PNG, "x.png")).status_code == 201
        assert_problem(await post(client, b"text"), 415, "type_not_allowed")


async def test_identical_concurrent_uploads_store_one_blob(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    data = b"same content " * 1000
    responses = await asyncio.gather(*(post(client, data, f"copy{i}") for i in range(5)))
    assert all(r.status_code == 201 for r in responses)
    ids = {r.json()["id"] for r in responses}
    assert len(ids) == 5
    assert len(blob_files(tmp_path)) == 1
    for file_id in list(ids)[:4]:
        assert (await client.delete(f"/files/{file_id}")).status_code == 204
    assert len(blob_files(tmp_path)) == 1
    last = ids.difference(list(ids)[:4]).pop()
    assert (await client.get(f"/download/{last}")).content == data
    assert (await client.delete(f"/files/{last}")).status_code == 204
    assert blob_files(tmp_path) == []


async def test_delete_makes_every_read_404(client: httpx.AsyncClient) -> None:
    record = (await post(client, b"short-lived")).json()
    assert (await client.get(f"/files/{record['id']}")).status_code == 200  # cached now
    response = await client.delete(f"/files/{record['id']}")
    assert response.status_code == 204
    for path in (f"/files/{record['id']}", f"/download/{record['id']}", f"/view/{record['id']}"):
        assert_problem(await client.get(path), 404, "file_not_found")
    assert_problem(await client.delete(f"/files/{record['id']}"), 404, "file_not_found")


async def test_list_pages_filters_and_sorts(client: httpx.AsyncClient) -> None:
    for name in ("b.txt", "a_1.txt", "c%.txt", "img.png"):
        await post(client, PNG if name.endswith(".png") else name.encode() * 3, name)
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": "3", "sort": "filename", **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/files", params=params)).json()
        seen += [item["filename"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ["a_1.txt", "b.txt", "c%.txt", "img.png"]
    images = (await client.get("/files", params={"content_type": "image/*"})).json()
    assert [i["filename"] for i in images["items"]] == ["img.png"]
    like = (await client.get("/files", params={"q": "%"})).json()
    assert [i["filename"] for i in like["items"]] == ["c%.txt"]
    underscore = (await client.get("/files", params={"q": "_"})).json()
    assert [i["filename"] for i in underscore["items"]] == ["a_1.txt"]
    by_size = (await client.get("/files", params={"sort": "-size"})).json()
    sizes = [i["size"] for i in by_size["items"]]
    assert sizes == sorted(sizes, reverse=True)
    newest = (await client.get("/files")).json()
    assert newest["items"][0]["filename"] == "img.png"


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"limit": "0"}, "invalid_request"),
        ({"limit": "1001"}, "invalid_request"),
        ({"limit": "many"}, "invalid_request"),
        ({"sort": "owner"}, "invalid_request"),
        ({"cursor": "not-a-cursor"}, "invalid_cursor"),
        ({"content_type": "images"}, "invalid_content_type"),
    ],
)
async def test_list_rejects_bad_parameters(
    client: httpx.AsyncClient, params: dict[str, str], code: str
) -> None:
    assert_problem(await client.get("/files", params=params), 400, code)


async def test_cursor_of_another_sort_is_rejected(client: httpx.AsyncClient) -> None:
    for i in range(3):
        await post(client, b"x" * (i + 1), f"{i}.txt")
    page = (await client.get("/files", params={"limit": "1", "sort": "size"})).json()
    response = await client.get(
        "/files", params={"cursor": page["next_cursor"], "sort": "filename"}
    )
    assert_problem(response, 400, "invalid_cursor")


async def test_request_id_is_echoed_or_generated(client: httpx.AsyncClient) -> None:
    mine = await client.get("/files/unknown", headers={"x-request-id": "abc-123"})
    assert mine.headers["x-request-id"] == "abc-123"
    assert mine.json()["request_id"] == "abc-123"
    hostile = await client.get("/healthz", headers={"x-request-id": "bad id\twith spaces"})
    assert hostile.headers["x-request-id"] != "bad id\twith spaces"
    assert len(hostile.headers["x-request-id"]) == 32


async def test_unknown_route_and_method_are_problems(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/nowhere"), 404, "not_found")
    assert_problem(await client.patch("/files/x"), 405, "method_not_allowed")


async def test_health_and_readiness(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert body["status"] == "ok"
    assert body["checks"]["database"]["status"] == "ok"
    assert body["checks"]["blob_storage"]["status"] == "ok"


async def test_openapi_documents_the_upload_body(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    body = spec["paths"]["/upload"]["post"]["requestBody"]["content"]
    assert "file" in body["multipart/form-data"]["schema"]["properties"]
