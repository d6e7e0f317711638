"""BlobResponse: whole blobs go by pathsend when the server offers it; everything else streams."""

from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel
import pytest

from filewallball.domain.models import ByteRange
from filewallball.entrypoints.http.responses import BlobResponse, Segment
from tests.fakes import FakeBlobReader

DATA = b"0123456789" * 100
PATHSEND = {"http.response.pathsend": {}}


async def _run(response: BlobResponse, extensions: dict[str, Any]) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        raise AssertionError("not read")

    scope = {"type": "http", "extensions": extensions}
    await response(scope, receive, send)
    return sent


def _response(reader: FakeBlobReader, *ranges: ByteRange, status: int = 200) -> BlobResponse:
    segments = [Segment(blob_range=r) for r in ranges]
    return BlobResponse(reader=reader, status=status, headers={}, segments=segments)


def _body(sent: list[dict[str, Any]]) -> bytes:
    return b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


async def test_a_whole_blob_with_a_path_goes_by_pathsend() -> None:
    reader = FakeBlobReader(DATA, path="/blobs/ab/cd/abcd")
    sent = await _run(_response(reader, ByteRange(0, len(DATA) - 1)), PATHSEND)
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.pathsend"]
    assert sent[1]["path"] == "/blobs/ab/cd/abcd"
    assert reader.closed


@pytest.mark.parametrize(
    ("extensions", "path", "ranges", "status"),
    [
        ({}, "/blobs/x", [ByteRange(0, len(DATA) - 1)], 200),  # the server cannot
        (PATHSEND, None, [ByteRange(0, len(DATA) - 1)], 200),  # no local file
        (PATHSEND, "/blobs/x", [ByteRange(10, 19)], 206),  # one range
        (PATHSEND, "/blobs/x", [ByteRange(0, 9), ByteRange(20, 29)], 206),  # several
    ],
)
async def test_anything_else_streams_through_python(
    extensions: dict[str, Any], path: str | None, ranges: list[ByteRange], status: int
) -> None:
    reader = FakeBlobReader(DATA, path=path)
    sent = await _run(_response(reader, *ranges, status=status), extensions)
    assert "http.response.pathsend" not in [m["type"] for m in sent]
    assert _body(sent) == b"".join(DATA[r.start : r.end + 1] for r in ranges)
    assert reader.closed


async def test_a_client_gone_mid_body_stops_the_stream_and_only_what_was_sent_counts() -> None:
    data = b"z" * (300 * 1024)  # more than one read: the disconnect is watched
    reader = FakeBlobReader(data)
    gone = anyio.Event()
    bodies: list[bytes] = []

    async def send(message: dict[str, Any]) -> None:
        await anyio.lowlevel.checkpoint()  # where a server waits for room: not yet taken
        if message["type"] == "http.response.body":
            bodies.append(message["body"])
            if len(bodies) == 100:
                gone.set()  # the server, like uvicorn and granian, goes on accepting

    async def receive() -> dict[str, Any]:
        await gone.wait()
        return {"type": "http.disconnect"}

    counted: list[int] = []

    async def on_sent(sent: int) -> None:
        counted.append(sent)

    response = BlobResponse(
        reader=reader,
        status=200,
        headers={},
        segments=[Segment(blob_range=ByteRange(0, len(data) - 1))],
        on_sent=on_sent,
    )
    await response({"type": "http", "extensions": {}}, receive, send)
    assert counted == [sum(len(b) for b in bodies)]
    assert 0 < counted[0] < 1000
    assert reader.closed


async def test_what_the_server_sends_itself_counts_whole() -> None:
    reader = FakeBlobReader(DATA, path="/blobs/x")
    counted: list[int] = []

    async def on_sent(sent: int) -> None:
        counted.append(sent)

    response = BlobResponse(
        reader=reader,
        status=200,
        headers={},
        segments=[Segment(blob_range=ByteRange(0, len(DATA) - 1))],
        on_sent=on_sent,
    )
    await _run(response, PATHSEND)
    assert counted == [len(DATA)]
