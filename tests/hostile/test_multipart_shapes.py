"""Multipart bodies shaped to burn CPU or to never end: bounded, and answered quickly.

Each body is generated while it is sent (nothing near its size is held in memory); the test
counts how much the server read and bounds the time it took.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import httpx

from tests.integration.test_http_files import assert_problem

BOUNDARY = b"b"
CONTENT_TYPE = "multipart/form-data; boundary=b"
CHUNK = 64 * 1024
# Long enough that the old code ran for many seconds, short enough to fail quickly.
DEADLINE = 10.0


class Body:
    """An async body from a generator of byte strings, counting what the server consumed."""

    def __init__(self, pieces: Iterator[bytes]) -> None:
        self._pieces = pieces
        self.sent = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        buffer = bytearray()
        for piece in self._pieces:
            buffer += piece
            if len(buffer) >= CHUNK:
                self.sent += len(buffer)
                yield bytes(buffer)
                buffer.clear()
                await asyncio.sleep(0)  # let the server run between chunks, as a socket would
        if buffer:
            self.sent += len(buffer)
            yield bytes(buffer)


def file_part() -> bytes:
    return b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.txt"\r\n\r\nhello\r\n'


async def send(client: httpx.AsyncClient, body: Body) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    async with asyncio.timeout(DEADLINE):
        response = await client.post(
            "/upload", content=body.__aiter__(), headers={"content-type": CONTENT_TYPE}
        )
    return response, time.monotonic() - started


async def test_two_million_empty_parts_are_refused_early(client: httpx.AsyncClient) -> None:
    def pieces() -> Iterator[bytes]:
        yield file_part()
        for _ in range(2_000_000):
            yield b"--b\r\n\r\n\r\n"
        yield b"--b--\r\n"

    body = Body(pieces())
    response, elapsed = await send(client, body)
    assert_problem(response, 400, "form_too_large")
    assert body.sent < 2 * 1024 * 1024, body.sent
    assert elapsed < 3, elapsed


async def test_empty_parts_before_the_file_are_refused_early(client: httpx.AsyncClient) -> None:
    def pieces() -> Iterator[bytes]:
        for _ in range(2_000_000):
            yield b"--b\r\n\r\n\r\n"
        yield file_part() + b"--b--\r\n"

    body = Body(pieces())
    response, elapsed = await send(client, body)
    assert_problem(response, 400, "form_too_large")
    assert body.sent < 2 * 1024 * 1024, body.sent
    assert elapsed < 3, elapsed


async def test_an_endless_epilogue_is_not_read(client: httpx.AsyncClient) -> None:
    def pieces() -> Iterator[bytes]:
        yield file_part() + b"--b--\r\n"
        junk = b"x" * CHUNK
        for _ in range(800 * 16):  # 800 MiB, were it all read
            yield junk

    body = Body(pieces())
    response, elapsed = await send(client, body)
    assert_problem(response, 400, "form_too_large")
    assert body.sent < 4 * 1024 * 1024, body.sent
    assert elapsed < 3, elapsed
    listed = await client.get("/files")
    assert listed.json()["items"] == []  # nothing was stored


async def test_an_endless_preamble_is_not_read(client: httpx.AsyncClient) -> None:
    def pieces() -> Iterator[bytes]:
        newlines = b"\r\n" * (CHUNK // 2)
        for _ in range(800 * 16):
            yield newlines
        yield file_part() + b"--b--\r\n"

    body = Body(pieces())
    response, elapsed = await send(client, body)
    assert_problem(response, 400, "form_too_large")
    assert body.sent < 4 * 1024 * 1024, body.sent
    assert elapsed < 3, elapsed


async def test_a_small_epilogue_and_a_few_fields_are_fine(client: httpx.AsyncClient) -> None:
    fields = b"".join(
        b'--b\r\nContent-Disposition: form-data; name="note%d"\r\n\r\nhi\r\n' % i for i in range(20)
    )
    body = fields + file_part() + b"--b--\r\n" + b"\r\nan epilogue\r\n"
    response = await client.post("/upload", content=body, headers={"content-type": CONTENT_TYPE})
    assert response.status_code == 201, response.text
