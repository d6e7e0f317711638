"""Downloads (RFC 9110 ranges and conditions) and text previews through the real HTTP stack."""

from __future__ import annotations

import base64
import hashlib
from email.utils import format_datetime, parsedate_to_datetime
from urllib.parse import unquote

import httpx
import pytest

from tests.integration.test_http_files import PNG, assert_problem, post

# Stored bytes: these run on S3 too (tests/integration/conftest.py).
ON_S3 = True

DATA = b"".join(hashlib.sha256(bytes([i % 256, i // 256])).digest() for i in range(320))  # 10 KiB


@pytest.fixture
async def record(client: httpx.AsyncClient) -> dict[str, str]:
    response = await post(client, DATA, "données.bin")
    assert response.status_code == 201
    body: dict[str, str] = response.json()
    return body


async def test_download_headers(client: httpx.AsyncClient, record: dict[str, str]) -> None:
    response = await client.get(f"/download/{record['id']}")
    assert response.status_code == 200
    assert response.content == DATA
    headers = response.headers
    assert headers["etag"] == f'"{record["sha256"]}"'
    assert headers["accept-ranges"] == "bytes"
    assert headers["content-length"] == str(len(DATA))
    assert headers["content-type"] == "application/octet-stream"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["content-security-policy"] == "sandbox"
    digest = base64.b64encode(hashlib.sha256(DATA).digest()).decode()
    assert headers["content-digest"] == f"sha-256=:{digest}:"
    assert headers["repr-digest"] == f"sha-256=:{digest}:"
    assert parsedate_to_datetime(headers["last-modified"]).tzinfo is not None
    assert headers["content-disposition"] == (
        "attachment; filename=\"donnees.bin\"; filename*=UTF-8''donn%C3%A9es.bin"
    )
    assert unquote(headers["content-disposition"].split("''")[1]) == "données.bin"


async def test_head_has_headers_and_no_body(
    client: httpx.AsyncClient, record: dict[str, str]
) -> None:
    response = await client.head(f"/download/{record['id']}")
    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["content-length"] == str(len(DATA))
    assert response.headers["etag"] == f'"{record["sha256"]}"'
    partial = await client.head(f"/download/{record['id']}", headers={"range": "bytes=0-9"})
    assert partial.status_code == 206
    assert partial.headers["content-length"] == "10"


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=0-0", 0, 0),
        ("bytes=0-99", 0, 99),
        ("bytes=10000-", 10000, 10239),
        ("bytes=-1", 10239, 10239),
        ("bytes=-20000", 0, 10239),
        ("bytes=10230-99999", 10230, 10239),
    ],
)
async def test_single_ranges(
    client: httpx.AsyncClient, record: dict[str, str], header: str, start: int, end: int
) -> None:
    response = await client.get(f"/download/{record['id']}", headers={"range": header})
    assert response.status_code == 206
    assert response.content == DATA[start : end + 1]
    assert response.headers["content-range"] == f"bytes {start}-{end}/{len(DATA)}"
    assert response.headers["content-length"] == str(end - start + 1)
    assert "content-digest" not in response.headers  # it would describe the partial content
    assert response.headers["repr-digest"].startswith("sha-256=:")


@pytest.mark.parametrize("header", ["bytes=10240-", "bytes=20000-30000", "bytes=-0"])
async def test_unsatisfiable_range(
    client: httpx.AsyncClient, record: dict[str, str], header: str
) -> None:
    response = await client.get(f"/download/{record['id']}", headers={"range": header})
    assert_problem(response, 416, "range_not_satisfiable")
    assert response.headers["content-range"] == f"bytes */{len(DATA)}"


@pytest.mark.parametrize("header", ["bytes=5-1", "lines=1-2", "bytes=x-y", "bytes=" + "0-0," * 200])
async def test_invalid_or_excessive_range_gives_the_whole_file(
    client: httpx.AsyncClient, record: dict[str, str], header: str
) -> None:
    response = await client.get(f"/download/{record['id']}", headers={"range": header})
    assert response.status_code == 200
    assert response.content == DATA


async def test_several_ranges_are_multipart_byteranges(
    client: httpx.AsyncClient, record: dict[str, str]
) -> None:
    response = await client.get(
        f"/download/{record['id']}", headers={"range": "bytes=9000-9009,0-4,2-6"}
    )
    assert response.status_code == 206
    content_type = response.headers["content-type"]
    assert content_type.startswith("multipart/byteranges; boundary=")
    boundary = content_type.split("boundary=")[1].encode()
    assert int(response.headers["content-length"]) == len(response.content)
    parts = response.content.split(b"--" + boundary)
    assert parts[-1] == b"--\r\n"
    bodies = []
    for part in parts[1:-1]:
        head, _, body = part.partition(b"\r\n\r\n")
        assert b"Content-Type: application/octet-stream" in head
        bodies.append((head, body.removesuffix(b"\r\n")))
    assert bodies[0][1] == DATA[0:7]  # 0-4 and 2-6 merged
    assert b"Content-Range: bytes 0-6/10240" in bodies[0][0]
    assert bodies[1][1] == DATA[9000:9010]


async def test_conditional_requests(client: httpx.AsyncClient, record: dict[str, str]) -> None:
    url = f"/download/{record['id']}"
    etag = f'"{record["sha256"]}"'
    first = await client.get(url)
    last_modified = first.headers["last-modified"]

    not_modified = await client.get(url, headers={"if-none-match": etag})
    assert not_modified.status_code == 304
    assert not_modified.content == b""
    assert not_modified.headers["etag"] == etag
    assert (await client.get(url, headers={"if-none-match": '"nope"'})).status_code == 200
    assert (await client.get(url, headers={"if-modified-since": last_modified})).status_code == 304
    earlier = format_datetime(parsedate_to_datetime(last_modified).replace(year=2000), usegmt=True)
    assert (await client.get(url, headers={"if-modified-since": earlier})).status_code == 200

    assert (await client.get(url, headers={"if-match": etag})).status_code == 200
    assert_problem(
        await client.get(url, headers={"if-match": '"nope"'}), 412, "precondition_failed"
    )
    assert_problem(
        await client.get(url, headers={"if-unmodified-since": earlier}), 412, "precondition_failed"
    )

    honoured = await client.get(url, headers={"range": "bytes=0-9", "if-range": etag})
    assert honoured.status_code == 206
    stale = await client.get(url, headers={"range": "bytes=0-9", "if-range": '"old"'})
    assert stale.status_code == 200
    assert stale.content == DATA
    by_date = await client.get(url, headers={"range": "bytes=0-9", "if-range": last_modified})
    assert by_date.status_code == 206


async def test_unknown_download_is_404(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/download/AAAAAAAAAAAAAAAAAAAAAA"), 404, "file_not_found")
    assert_problem(await client.get("/download/..%2F..%2Fetc%2Fpasswd"), 404, "not_found")
    assert (await client.head("/download/AAAAAAAAAAAAAAAAAAAAAA")).status_code == 404


async def test_view_text(client: httpx.AsyncClient) -> None:
    text = "Grüße, мир! 👋\n"
    record = (await post(client, text.encode(), "hello.txt")).json()
    response = await client.get(f"/view/{record['id']}")
    assert response.status_code == 200
    assert response.text == text
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert "x-preview-truncated" not in response.headers
    assert response.headers["content-security-policy"] == "sandbox"
    assert response.headers["x-content-type-options"] == "nosniff"


async def test_view_is_capped_without_splitting_characters(client: httpx.AsyncClient) -> None:
    text = "é" * 100  # 200 bytes; the client fixture caps previews at 100 bytes
    record = (await post(client, text.encode(), "long.txt")).json()
    response = await client.get(f"/view/{record['id']}")
    assert response.status_code == 200
    assert response.headers["x-preview-truncated"] == "true"
    assert response.text == "é" * 50


async def test_view_of_non_utf8_text(client: httpx.AsyncClient) -> None:
    text = "Ça coûte 5 €, très cher à Zürich.\n"
    record = (await post(client, text.encode("cp1252"), "latin1.txt")).json()
    assert record["content_type"].startswith("text/")
    response = await client.get(f"/view/{record['id']}")
    assert response.status_code == 200
    assert response.text == text  # transcoded to UTF-8
    assert response.headers["x-preview-charset"] == "cp1252"


async def test_view_lines_cap(client: httpx.AsyncClient) -> None:
    record = (await post(client, b"one\ntwo\nthree\n", "lines.txt")).json()
    response = await client.get(f"/view/{record['id']}", params={"lines": "2"})
    assert response.text == "one\ntwo\n"
    assert response.headers["x-preview-truncated"] == "true"
    assert_problem(
        await client.get(f"/view/{record['id']}", params={"lines": "0"}), 400, "invalid_request"
    )


async def test_view_of_binary_is_415(client: httpx.AsyncClient) -> None:
    record = (await post(client, PNG, "image.png")).json()
    assert_problem(await client.get(f"/view/{record['id']}"), 415, "not_previewable")
    assert record["urls"]["view"] is None


async def test_svg_and_html_are_never_inline(client: httpx.AsyncClient) -> None:
    svg = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
    html = b"<!DOCTYPE html><html><body><script>alert(1)</script></body></html>"
    for data, name in ((svg, "x.svg"), (html, "x.html")):
        record = (await post(client, data, name)).json()
        response = await client.get(f"/download/{record['id']}")
        assert response.headers["content-disposition"].startswith("attachment;")
        assert response.headers["content-security-policy"] == "sandbox"
        assert response.headers["x-content-type-options"] == "nosniff"
