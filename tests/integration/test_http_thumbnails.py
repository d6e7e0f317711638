"""Thumbnails over HTTP: negotiation, storage, caching headers, failures that leave the service up."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import pyvips  # type: ignore[import-untyped]

from filewallball.entrypoints.http.routes.content import negotiate_image_format
from tests import images
from tests.integration.conftest import AppFactory
from tests.integration.test_http_files import assert_problem, post
from tests.integration.test_server import AUTH, start_server
from tests.integration.test_vips_renderer import children as renderer_children

# Stored bytes: these run on S3 too (tests/integration/conftest.py).
ON_S3 = True


def png(width: int, height: int) -> bytes:
    red = pyvips.Image.black(width, height, bands=3).linear([1, 1, 1], [200, 30, 30])
    data: bytes = red.cast("uchar").pngsave_buffer()
    return data


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, "jpeg"),
        ("*/*", "jpeg"),
        ("image/webp,*/*", "webp"),
        ("image/avif,image/webp,*/*", "webp"),  # a tie: the faster encoder
        ("image/avif;q=1,image/webp;q=0.8", "avif"),
        ("image/webp;q=0, image/jpeg", "jpeg"),
        ("text/html", "jpeg"),
        ("image/webp;q=abc", "jpeg"),
    ],
)
def test_negotiation(accept: str | None, expected: str) -> None:
    assert negotiate_image_format(accept).value == expected


async def test_thumbnail_round_trip(client: httpx.AsyncClient) -> None:
    record = (await post(client, png(1200, 600), "wide.png")).json()
    assert record["thumbnail_status"] == "pending"
    assert record["urls"]["thumbnail"] == f"http://testserver/thumbnails/{record['id']}"
    response = await client.get(
        record["urls"]["thumbnail"], params={"size": "small"}, headers={"accept": "image/webp"}
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/webp"
    assert response.headers["vary"] == "Accept"
    assert "immutable" in response.headers["cache-control"]
    image = pyvips.Image.new_from_buffer(response.content, "")
    assert (image.width, image.height) == (256, 128)
    etag = response.headers["etag"]
    again = await client.get(
        record["urls"]["thumbnail"],
        params={"size": "small"},
        headers={"accept": "image/webp", "if-none-match": etag},
    )
    assert again.status_code == 304
    jpeg = await client.get(record["urls"]["thumbnail"], params={"size": "large"})
    assert jpeg.headers["content-type"] == "image/jpeg"
    assert pyvips.Image.new_from_buffer(jpeg.content, "").width == 1024
    assert (await client.get(f"/files/{record['id']}")).json()["thumbnail_status"] == "ready"
    assert_problem(
        await client.get(record["urls"]["thumbnail"], params={"size": "huge"}),
        400,
        "invalid_request",
    )


async def test_non_images_and_broken_images(client: httpx.AsyncClient) -> None:
    text = (await post(client, b"just text", "a.txt")).json()
    assert text["urls"]["thumbnail"] is None
    assert_problem(await client.get(f"/thumbnails/{text['id']}"), 415, "not_an_image")
    broken = (await post(client, png(300, 300)[:200], "broken.png")).json()
    assert broken["content_type"] == "image/png"
    assert_problem(await client.get(f"/thumbnails/{broken['id']}"), 422, "thumbnail_failed")
    assert (await client.get(f"/files/{broken['id']}")).json()["thumbnail_status"] == "failed"
    assert_problem(await client.get(f"/thumbnails/{broken['id']}"), 422, "thumbnail_failed")
    assert (await client.get("/healthz")).status_code == 200


async def test_thumbnails_follow_access_rules(make_client: AppFactory) -> None:
    async with make_client() as admin:
        key = (await admin.post("/admin/keys", json={"name": "eve", "role": "reader"})).json()[
            "key"
        ]
        record = (await post(admin, png(100, 100), "private.png")).json()
        response = await admin.get(
            f"/thumbnails/{record['id']}", headers={"authorization": f"Bearer {key}"}
        )
        assert_problem(response, 404, "file_not_found")


async def test_an_image_over_the_memory_bound_fails_and_leaves_no_renderer(
    make_client: AppFactory,
) -> None:
    """FWB_THUMBNAIL_MAX_MEMORY_BYTES reaches the renderer; shutdown stops its children."""
    bound = 128 * 1024**2
    async with make_client(thumbnail_max_memory_bytes=bound) as client:
        record = (await post(client, images.webp_large(), "large.webp")).json()
        response = await client.get(f"/thumbnails/{record['id']}")
        assert_problem(response, 422, "thumbnail_failed")
        assert f"more memory than {bound} bytes" in response.json()["detail"]
        assert (await client.get(f"/files/{record['id']}")).json()["thumbnail_status"] == "failed"
        small = (await post(client, png(300, 200), "small.png")).json()
        assert (await client.get(f"/thumbnails/{small['id']}")).status_code == 200
        assert renderer_children()
    assert renderer_children() == []


@pytest.mark.parametrize("level", ["info", "debug"])
def test_libvips_narration_is_debug(tmp_path: Path, level: str) -> None:
    """libvips' ~6 info lines per thumbnail (in the renderer's children) stay out of the logs
    at info; at debug they are there, as debug lines."""
    server = start_server(tmp_path, env={"FWB_LOG_LEVEL": level})
    try:
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as client:
            record = client.post("/upload", files={"file": ("a.png", png(900, 300))}).json()
            for size, accept in [("small", "image/webp"), ("medium", "image/avif")]:
                response = client.get(
                    f"/thumbnails/{record['id']}", params={"size": size}, headers={"accept": accept}
                )
                assert response.status_code == 200, response.text
    finally:
        server.stop()
    lines = [json.loads(line) for line in server.log_path.read_text().splitlines()]
    libvips = [line for line in lines if "VIPS" in line["event"] or "vips" in line["logger"]]
    if level == "info":
        assert libvips == []
    else:
        assert libvips
        assert {line["level"] for line in libvips if "VIPS:" in line["event"]} == {"debug"}
        assert not [line for line in libvips if line["logger"] != "pyvips"]  # no call tracing
