"""tus 1.0 at /tus through the real HTTP stack, on every backend: the protocol, and the same
rules as POST /upload (DESIGN.md §6). Real clients (tuspy, tus-js-client) are in tests/clients."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import AsyncIterator
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import AppFactory, blob_files
from tests.integration.test_http_files import PNG, assert_problem
from tests.integration.test_http_security import make_key

# Stored bytes: these run on S3 too (tests/integration/conftest.py); these check the protocol
# only (headers, validation, auth), the same on every backend: SQLite only.
ON_S3 = True
PROTOCOL_ONLY = (
    "test_options_tell_what_the_server_supports_without_a_key",
    "test_requests_without_tus_resumable_are_412",
    "test_malformed_headers_are_400",
    "test_an_upload_over_the_limit_is_413_at_creation",
    "test_an_upload_belongs_to_its_owner",
    "test_method_override_reaches_patch_and_delete",
    "test_cors_lets_browsers_speak_tus",
    "test_a_concatenation_needs_complete_parts_of_the_caller",
)

TUS = {"Tus-Resumable": "1.0.0"}
PATCH = {**TUS, "Content-Type": "application/offset+octet-stream"}


def metadata(**pairs: str) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in pairs.items())


async def create(
    client: httpx.AsyncClient,
    length: int | None,
    *,
    headers: dict[str, str] | None = None,
    **meta: str,
) -> str:
    sizing = {"Upload-Length": str(length)} if length is not None else {"Upload-Defer-Length": "1"}
    response = await client.post(
        "/tus", headers={**TUS, **sizing, "Upload-Metadata": metadata(**meta), **(headers or {})}
    )
    assert response.status_code == 201, response.text
    location: str = response.headers["location"]
    assert location.startswith("http://testserver/tus/")
    return location.removeprefix("http://testserver")


async def patch(
    client: httpx.AsyncClient, url: str, offset: int, data: bytes, **headers: str
) -> httpx.Response:
    sent = {
        **PATCH,
        "Upload-Offset": str(offset),
        **{k.replace("_", "-"): v for k, v in headers.items()},
    }
    return await client.patch(url, content=data, headers=sent)


def checksum(algorithm: str, data: bytes) -> str:
    digest = hashlib.new(algorithm, data).digest()
    return f"{algorithm} {base64.b64encode(digest).decode()}"


def segments_on_disk(data_dir: Path) -> list[Path]:
    return [p for p in (data_dir / "blobs" / ".tus").rglob("*") if p.is_file()]


async def test_options_tell_what_the_server_supports_without_a_key(
    make_client: AppFactory,
) -> None:
    async with make_client(key=None, max_upload_bytes=12345) as anonymous:
        response = await anonymous.options("/tus")
    assert response.status_code == 204
    assert response.headers["tus-version"] == "1.0.0"
    assert response.headers["tus-resumable"] == "1.0.0"
    assert response.headers["tus-max-size"] == "12345"
    assert set(response.headers["tus-extension"].split(",")) == {
        "creation",
        "creation-with-upload",
        "creation-defer-length",
        "termination",
        "checksum",
        "expiration",
        "concatenation",
    }
    assert response.headers["tus-checksum-algorithm"].split(",") == ["sha256", "sha1", "md5"]


async def test_an_upload_in_three_patches_becomes_the_file(
    client: httpx.AsyncClient, backend: dict[str, Any]
) -> None:
    data = bytes(range(256)) * 1000
    url = await create(client, len(data), filename="parts.bin")
    head = await client.head(url, headers=TUS)
    assert head.status_code == 200
    assert head.headers["upload-offset"] == "0"
    assert head.headers["upload-length"] == str(len(data))
    assert head.headers["cache-control"] == "no-store"
    expires = parsedate_to_datetime(head.headers["upload-expires"])
    assert expires.tzinfo is not None
    offset = 0
    for piece in (data[:100_000], data[100_000:200_000], data[200_000:]):
        response = await patch(client, url, offset, piece)
        assert response.status_code == 204, response.text
        offset += len(piece)
        assert response.headers["upload-offset"] == str(offset)
    file_id = response.headers["file-id"]
    assert "upload-expires" not in response.headers
    record = (await client.get(f"/files/{file_id}")).json()
    assert record["filename"] == "parts.bin"
    assert record["size"] == len(data)
    assert record["sha256"] == hashlib.sha256(data).hexdigest()
    assert (await client.get(f"/download/{file_id}")).content == data
    after = await client.head(url, headers=TUS)
    assert after.headers["file-id"] == file_id
    assert after.headers["upload-offset"] == str(len(data))
    # The segments are gone once the file is made; on disk only its blob stays.
    if "s3_bucket" not in backend:
        assert segments_on_disk(backend["data_dir"]) == []
    assert len(blob_files(backend["data_dir"])) == 1


async def test_a_wrong_offset_is_409_and_changes_nothing(client: httpx.AsyncClient) -> None:
    url = await create(client, 10)
    assert (await patch(client, url, 0, b"hello")).status_code == 204
    mismatch = await patch(client, url, 3, b"lo wo")
    assert_problem(mismatch, 409, "offset_mismatch")
    assert mismatch.headers["tus-resumable"] == "1.0.0"  # errors too carry it
    assert_problem(await patch(client, url, 0, b"hello"), 409, "offset_mismatch")
    assert (await client.head(url, headers=TUS)).headers["upload-offset"] == "5"
    done = await patch(client, url, 5, b"world")
    assert done.status_code == 204
    assert (await client.get(f"/download/{done.headers['file-id']}")).content == b"helloworld"


async def test_requests_without_tus_resumable_are_412(client: httpx.AsyncClient) -> None:
    response = await client.post("/tus", headers={"Upload-Length": "5"})
    assert_problem(response, 412, "unsupported_tus_version")
    assert response.headers["tus-version"] == "1.0.0"
    url = await create(client, 5)
    old = await client.patch(
        url, content=b"hello", headers={**PATCH, "Tus-Resumable": "0.2.2", "Upload-Offset": "0"}
    )
    assert_problem(old, 412, "unsupported_tus_version")


async def test_malformed_headers_are_400(client: httpx.AsyncClient) -> None:
    for headers, code in [
        ({"Upload-Length": "-1"}, "invalid_upload_length"),
        ({"Upload-Length": "1e3"}, "invalid_upload_length"),
        ({"Upload-Length": "9" * 30}, "invalid_upload_length"),
        ({}, "invalid_upload_length"),
        ({"Upload-Length": "3", "Upload-Defer-Length": "1"}, "invalid_upload_length"),
        ({"Upload-Defer-Length": "2"}, "invalid_upload_defer_length"),
        ({"Upload-Length": "3", "Upload-Metadata": "filename !!notbase64"}, "invalid_metadata"),
        ({"Upload-Length": "3", "Upload-Metadata": "a YQ==,a YQ=="}, "invalid_metadata"),
        ({"Upload-Length": "3", "Upload-Metadata": "k " + "QUFB" * 2000}, "invalid_metadata"),
        ({"Upload-Length": "3", "Upload-Metadata": metadata(visibility="x")}, "invalid_visibility"),
        ({"Upload-Length": "3", "Upload-Metadata": metadata(expires_in="soon")}, "invalid_expiry"),
        (
            {"Upload-Length": "3", "Upload-Metadata": "filename \u00e9t\u00e9".encode("latin-1")},
            "invalid_metadata",
        ),
    ]:
        assert_problem(await client.post("/tus", headers={**TUS, **headers}), 400, code)
    url = await create(client, 5)
    assert_problem(
        await client.patch(url, content=b"x", headers={**PATCH}), 400, "invalid_upload_offset"
    )
    assert_problem(
        await client.patch(
            url, content=b"x", headers={**TUS, "Upload-Offset": "0", "Content-Type": "text/plain"}
        ),
        415,
        "expected_offset_octet_stream",
    )
    assert_problem(
        await patch(client, url, 0, b"x", Upload_Checksum="crc32 AAAA"), 400, "unsupported_checksum"
    )
    assert_problem(
        await patch(client, url, 0, b"x", Upload_Checksum="sha1 AAAA"), 400, "invalid_checksum"
    )
    not_ascii = {
        **PATCH,
        "Upload-Offset": "0",
        "Upload-Checksum": "sha1 \u00e9\u00e9".encode("latin-1"),
    }
    assert_problem(
        await client.patch(url, content=b"x", headers=not_ascii), 400, "invalid_checksum"
    )
    assert_problem(
        await patch(client, url, 0, b"x", Upload_Length="6"), 400, "invalid_upload_length"
    )
    assert (await client.head(url, headers=TUS)).headers["upload-offset"] == "0"


async def test_an_upload_over_the_limit_is_413_at_creation(make_client: AppFactory) -> None:
    async with make_client(max_upload_bytes=1000) as client:
        response = await client.post("/tus", headers={**TUS, "Upload-Length": "1001"})
        assert_problem(response, 413, "file_too_large")
        url = await create(client, 1000)
        # More bytes than the declared length: refused, nothing of them kept.
        assert (await patch(client, url, 0, b"a" * 600)).status_code == 204
        assert_problem(await patch(client, url, 600, b"b" * 401), 413, "upload_length_exceeded")
        assert (await client.head(url, headers=TUS)).headers["upload-offset"] == "600"

        # Without a Content-Length the excess is found as it streams: still nothing of it kept.
        async def unsized() -> AsyncIterator[bytes]:
            yield b"c" * 300
            yield b"d" * 300

        streamed = await client.patch(
            url, content=unsized(), headers={**PATCH, "Upload-Offset": "600"}
        )
        assert_problem(streamed, 413, "upload_length_exceeded")
        assert (await client.head(url, headers=TUS)).headers["upload-offset"] == "600"


async def test_a_deferred_length_is_declared_by_a_later_patch(client: httpx.AsyncClient) -> None:
    url = await create(client, None, filename="later.txt")
    head = await client.head(url, headers=TUS)
    assert head.headers["upload-defer-length"] == "1"
    assert "upload-length" not in head.headers
    assert (await patch(client, url, 0, b"first ")).status_code == 204
    done = await patch(client, url, 6, b"second", Upload_Length="12")
    assert done.status_code == 204, done.text
    assert (await client.get(f"/download/{done.headers['file-id']}")).content == b"first second"


async def test_a_deferred_upload_past_the_limit_is_413_and_removed(
    make_client: AppFactory, backend: dict[str, Any]
) -> None:
    async with make_client(max_upload_bytes=1000) as client:
        url = await create(client, None)
        assert (await patch(client, url, 0, b"a" * 900)).status_code == 204
        assert_problem(await patch(client, url, 900, b"b" * 200), 413, "file_too_large")
        assert (await client.head(url, headers=TUS)).status_code == 404
        declared = await create(client, None)
        assert_problem(
            await patch(client, declared, 0, b"", Upload_Length="1001"), 413, "file_too_large"
        )
        assert (await client.head(declared, headers=TUS)).status_code == 404
    if "s3_bucket" not in backend:
        assert segments_on_disk(backend["data_dir"]) == []


@pytest.mark.parametrize("algorithm", ["sha256", "sha1", "md5"])
async def test_checksums_are_verified_and_a_mismatch_keeps_nothing(
    client: httpx.AsyncClient, algorithm: str
) -> None:
    url = await create(client, 8)
    good = await patch(client, url, 0, b"abcd", Upload_Checksum=checksum(algorithm, b"abcd"))
    assert good.status_code == 204
    bad = await patch(client, url, 4, b"efgh", Upload_Checksum=checksum(algorithm, b"efgX"))
    assert_problem(bad, 460, "checksum_mismatch")
    assert bad.json()["title"] == "Checksum Mismatch"
    assert (await client.head(url, headers=TUS)).headers["upload-offset"] == "4"
    done = await patch(client, url, 4, b"efgh", Upload_Checksum=checksum(algorithm, b"efgh"))
    assert (await client.get(f"/download/{done.headers['file-id']}")).content == b"abcdefgh"


async def test_termination_removes_the_upload_and_its_bytes(
    client: httpx.AsyncClient, backend: dict[str, Any]
) -> None:
    url = await create(client, 10)
    assert (await patch(client, url, 0, b"12345")).status_code == 204
    if "s3_bucket" not in backend:
        assert len(segments_on_disk(backend["data_dir"])) == 1
    deleted = await client.delete(url, headers=TUS)
    assert deleted.status_code == 204
    assert (await client.head(url, headers=TUS)).status_code == 404
    assert_problem(await patch(client, url, 5, b"67890"), 404, "upload_not_found")
    assert_problem(await client.delete(url, headers=TUS), 404, "upload_not_found")
    if "s3_bucket" not in backend:
        assert segments_on_disk(backend["data_dir"]) == []


async def test_an_upload_belongs_to_its_owner(client: httpx.AsyncClient) -> None:
    alice = await make_key(client, "alice", "uploader")
    bob = await make_key(client, "bob", "uploader")
    reader = await make_key(client, "reader", "reader")
    url = await create(client, 4, headers={"authorization": f"Bearer {alice}"})
    for key in (bob, reader):
        auth = {"authorization": f"Bearer {key}"}
        expected = (404, "upload_not_found") if key == bob else (403, "access_denied")
        assert (await client.head(url, headers={**TUS, **auth})).status_code == expected[0]
        assert_problem(
            await client.patch(
                url, content=b"evil", headers={**PATCH, "Upload-Offset": "0", **auth}
            ),
            *expected,
        )
        assert_problem(await client.delete(url, headers={**TUS, **auth}), *expected)
    mine = {"authorization": f"Bearer {alice}"}
    done = await client.patch(url, content=b"mine", headers={**PATCH, "Upload-Offset": "0", **mine})
    assert done.status_code == 204
    record = (await client.get(f"/files/{done.headers['file-id']}", headers=mine)).json()
    assert record["size"] == 4
    assert (await client.head("/tus/not-an-id", headers=TUS)).status_code == 404


async def test_metadata_sets_the_name_visibility_and_expiry(client: httpx.AsyncClient) -> None:
    url = await create(client, 5, filename="../../etc/passwd", visibility="public", expires_in="1h")
    done = await patch(client, url, 0, b"hello")
    record = (await client.get(f"/files/{done.headers['file-id']}")).json()
    assert record["filename"] == ".._.._etc_passwd"
    assert record["visibility"] == "public"
    assert record["expires_at"] is not None
    head = await client.head(url, headers=TUS)
    assert head.headers["upload-metadata"] == metadata(
        filename="../../etc/passwd", visibility="public", expires_in="1h"
    )
    # Hostile names: NUL, controls, bidi overrides, invalid UTF-8 are stored sanitised.
    hostile = "x\x00y\u202egpj.exe\r\n"
    encoded = base64.b64encode(hostile.encode()).decode()
    invalid = base64.b64encode(bytes([0xFF, 0xFE])).decode()
    raw = f"filename {encoded},name {invalid}"
    made = await client.post("/tus", headers={**TUS, "Upload-Length": "2", "Upload-Metadata": raw})
    assert made.status_code == 201, made.text
    hostile_url = made.headers["location"].removeprefix("http://testserver")
    done = await patch(client, hostile_url, 0, b"ok")
    stored = (await client.get(f"/files/{done.headers['file-id']}")).json()["filename"]
    assert "\x00" not in stored and "\u202e" not in stored and "\n" not in stored


async def test_the_sniffed_type_is_checked_and_a_refused_file_removes_the_upload(
    make_client: AppFactory, backend: dict[str, Any]
) -> None:
    async with make_client(denied_types=["image/*"]) as client:
        url = await create(client, len(PNG), filename="fake.txt")
        refused = await patch(client, url, 0, PNG)
        assert_problem(refused, 415, "type_not_allowed")
        assert (await client.head(url, headers=TUS)).status_code == 404
        assert (await client.get("/files")).json()["items"] == []
    assert blob_files(backend["data_dir"]) == []


async def test_creation_with_upload_makes_the_file_in_one_request(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(
        "/tus",
        content=b"all at once",
        headers={
            **PATCH,
            "Upload-Length": "11",
            "Upload-Metadata": metadata(filename="once.txt"),
            "Upload-Checksum": checksum("sha256", b"all at once"),
        },
    )
    assert response.status_code == 201, response.text
    assert response.headers["upload-offset"] == "11"
    file_id = response.headers["file-id"]
    assert (await client.get(f"/download/{file_id}")).content == b"all at once"
    partial = await client.post("/tus", content=b"part", headers={**PATCH, "Upload-Length": "8"})
    assert partial.status_code == 201
    assert partial.headers["upload-offset"] == "4"
    mismatch = await client.post(
        "/tus",
        content=b"part",
        headers={**PATCH, "Upload-Length": "8", "Upload-Checksum": checksum("md5", b"nope")},
    )
    assert_problem(mismatch, 460, "checksum_mismatch")
    url = mismatch.headers["location"].removeprefix("http://testserver")
    assert (await client.head(url, headers=TUS)).headers["upload-offset"] == "0"


async def test_an_owner_has_a_bounded_number_of_open_uploads(make_client: AppFactory) -> None:
    async with make_client(tus_max_open_uploads=2) as client:
        first = await create(client, 3)
        await create(client, 3)
        assert_problem(
            await client.post("/tus", headers={**TUS, "Upload-Length": "3"}),
            429,
            "too_many_open_uploads",
        )
        assert (await patch(client, first, 0, b"abc")).status_code == 204  # complete: not open
        await create(client, 3)


async def test_the_quota_is_reserved_at_creation(client: httpx.AsyncClient) -> None:
    key = await make_key(client, "small", "uploader", quota_bytes=100)
    auth = {"authorization": f"Bearer {key}"}
    assert_problem(
        await client.post("/tus", headers={**TUS, "Upload-Length": "101", **auth}),
        413,
        "quota_exceeded",
    )
    url = await create(client, 60, headers=auth)
    # The 60 bytes held for the open upload leave 40 for anything else.
    assert_problem(
        await client.post("/tus", headers={**TUS, "Upload-Length": "41", **auth}),
        413,
        "quota_exceeded",
    )
    upload = await client.put("/upload/x.txt", content=b"x" * 41, headers=auth)
    assert_problem(upload, 413, "quota_exceeded")
    done = await client.patch(
        url, content=b"y" * 60, headers={**PATCH, "Upload-Offset": "0", **auth}
    )
    assert done.status_code == 204
    assert (await client.put("/upload/x.txt", content=b"x" * 40, headers=auth)).status_code == 201


async def test_of_concurrent_patches_at_one_offset_exactly_one_wins(
    client: httpx.AsyncClient,
) -> None:
    url = await create(client, 20)
    started = asyncio.Event()
    release = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        yield b"0123456789"
        started.set()
        await release.wait()

    first = asyncio.create_task(
        client.patch(url, content=slow(), headers={**PATCH, "Upload-Offset": "0"})
    )
    await started.wait()
    racing = await asyncio.gather(*(patch(client, url, 0, b"abcdefghij") for _ in range(5)))
    for response in racing:
        assert_problem(response, 423, "upload_locked")
    release.set()
    assert (await first).status_code == 204
    assert (await client.head(url, headers=TUS)).headers["upload-offset"] == "10"
    late = await patch(client, url, 0, b"abcdefghij")
    assert_problem(late, 409, "offset_mismatch")


async def test_method_override_reaches_patch_and_delete(client: httpx.AsyncClient) -> None:
    url = await create(client, 3)
    response = await client.post(
        url,
        content=b"abc",
        headers={**PATCH, "Upload-Offset": "0", "X-HTTP-Method-Override": "PATCH"},
    )
    assert response.status_code == 204
    assert response.headers["file-id"]
    other = await create(client, 3)
    gone = await client.post(other, headers={**TUS, "X-HTTP-Method-Override": "DELETE"})
    assert gone.status_code == 204
    assert (await client.head(other, headers=TUS)).status_code == 404


async def test_cors_lets_browsers_speak_tus(make_client: AppFactory) -> None:
    async with make_client(cors_origins=["https://app.example"]) as client:
        preflight = await client.options(
            "/tus",
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "PATCH",
                "Access-Control-Request-Headers": "tus-resumable,upload-offset,upload-checksum",
            },
        )
        assert preflight.status_code == 200
        assert "PATCH" in preflight.headers["access-control-allow-methods"]
        created = await client.post(
            "/tus", headers={**TUS, "Upload-Length": "3", "Origin": "https://app.example"}
        )
        exposed = {
            h.strip().lower() for h in created.headers["access-control-expose-headers"].split(",")
        }
        assert {
            "location",
            "upload-offset",
            "upload-expires",
            "tus-resumable",
            "file-id",
        } <= exposed


async def test_a_refused_type_is_told_once_its_first_bytes_are_in(
    make_client: AppFactory, backend: dict[str, Any]
) -> None:
    """Not after the last byte of a large file: as soon as the type can be sniffed."""
    png = PNG + b"\x00" * (20 * 1024)
    async with make_client(denied_types=["image/*"]) as client:
        url = await create(client, 1024 * 1024, filename="big.png")
        assert_problem(await patch(client, url, 0, png), 415, "type_not_allowed")
        assert (await client.head(url, headers=TUS)).status_code == 404
        # Text is allowed: its upload goes on.
        text = await create(client, 64 * 1024, filename="notes.txt")
        assert (await patch(client, text, 0, b"plain text\n" * 2000)).status_code == 204
    assert blob_files(backend["data_dir"]) == []
    if "s3_bucket" not in backend:
        assert len(segments_on_disk(backend["data_dir"])) == 1  # the text upload's


async def test_partial_uploads_sent_in_parallel_are_concatenated_into_one_file(
    client: httpx.AsyncClient, backend: dict[str, Any]
) -> None:
    pieces = [bytes([65 + n]) * (40_000 + n) for n in range(3)]
    parts = [
        await create(client, len(piece), headers={"Upload-Concat": "partial"}) for piece in pieces
    ]
    sent = await asyncio.gather(
        *(patch(client, u, 0, p) for u, p in zip(parts, pieces, strict=True))
    )
    assert all(response.status_code == 204 for response in sent)
    assert all("file-id" not in response.headers for response in sent)  # a part is no file
    head = await client.head(parts[0], headers=TUS)
    assert head.headers["upload-concat"] == "partial"
    assert (await client.get("/files")).json()["items"] == []
    final = await client.post(
        "/tus",
        headers={
            **TUS,
            "Upload-Concat": "final;" + " ".join(f"http://testserver{u}" for u in parts),
            "Upload-Metadata": metadata(filename="joined.bin"),
        },
    )
    assert final.status_code == 201, final.text
    file_id = final.headers["file-id"]
    assert final.headers["upload-offset"] == str(sum(map(len, pieces)))
    assert (await client.get(f"/download/{file_id}")).content == b"".join(pieces)
    record = (await client.get(f"/files/{file_id}")).json()
    assert record["filename"] == "joined.bin"
    url = final.headers["location"].removeprefix("http://testserver")
    again = await client.head(url, headers=TUS)
    assert again.headers["file-id"] == file_id
    assert again.headers["upload-concat"].startswith("final;")
    for part in parts:  # the parts are forgotten once they made the file
        assert (await client.head(part, headers=TUS)).status_code == 404
    if "s3_bucket" not in backend:
        assert segments_on_disk(backend["data_dir"]) == []


async def test_a_concatenation_needs_complete_parts_of_the_caller(
    make_client: AppFactory,
) -> None:
    async with make_client(max_upload_bytes=100) as client:
        done = await create(client, 60, headers={"Upload-Concat": "partial"})
        assert (await patch(client, done, 0, b"a" * 60)).status_code == 204
        unfinished = await create(client, 10, headers={"Upload-Concat": "partial"})
        whole = await create(client, 5)
        other = await create(client, 50, headers={"Upload-Concat": "partial"})
        assert (await patch(client, other, 0, b"b" * 50)).status_code == 204

        async def final(*urls: str, length: str | None = None) -> httpx.Response:
            headers = {**TUS, "Upload-Concat": "final;" + " ".join(urls)}
            if length is not None:
                headers["Upload-Length"] = length
            return await client.post("/tus", headers=headers)

        assert_problem(await final(done, unfinished), 400, "invalid_concat")
        assert_problem(await final(done, whole), 400, "invalid_concat")
        assert_problem(await final(done, done), 400, "invalid_concat")
        assert_problem(await final(), 400, "invalid_concat")
        assert_problem(await final(done, length="60"), 400, "invalid_upload_length")
        assert_problem(await final(done, other), 413, "file_too_large")  # 110 > 100
        assert_problem(await final(done, "/tus/" + "0" * 32), 404, "upload_not_found")
        bob = await make_key(client, "bob", "uploader")
        theirs = await client.post(
            "/tus",
            headers={**TUS, "Upload-Concat": f"final;{done}", "authorization": f"Bearer {bob}"},
        )
        assert_problem(theirs, 404, "upload_not_found")
        # Nothing above consumed the parts.
        made = await final(done)
        assert made.status_code == 201, made.text
        assert (await client.get(f"/download/{made.headers['file-id']}")).content == b"a" * 60


async def test_an_empty_file_is_made_at_creation(client: httpx.AsyncClient) -> None:
    """tus clients send no PATCH for an empty file: the creation makes it."""
    response = await client.post(
        "/tus", headers={**TUS, "Upload-Length": "0", "Upload-Metadata": metadata(filename="e")}
    )
    assert response.status_code == 201, response.text
    assert response.headers["upload-offset"] == "0"
    record = (await client.get(f"/files/{response.headers['file-id']}")).json()
    assert (record["filename"], record["size"]) == ("e", 0)
    part = await client.post(
        "/tus", headers={**TUS, "Upload-Length": "0", "Upload-Concat": "partial"}
    )
    assert "file-id" not in part.headers  # a part is never a file on its own
