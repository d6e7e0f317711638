"""Responses that stream a blob: whole, one range, or multipart/byteranges; the fd closed always.

A whole blob with a local file goes by the ASGI `http.response.pathsend` extension when the
server offers it (granian): the server then sends the file itself, without Python in the loop.
Behind nginx that asked for it, it goes by `X-Accel-Redirect`: nginx sends it with sendfile.

What counts as sent (the downloaded-bytes metric, the audit entry and so the usage statistics):
the bytes handed to the server, up to the moment the client went away. Handed over by pathsend
or X-Accel-Redirect, the server sends them out of our sight: the whole file counts.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from filewallball.domain.models import ByteRange
from filewallball.domain.ports import BlobReader
from filewallball.entrypoints.http.telemetry import DOWNLOADED_BYTES

# About one read of the blob store (adapters/disk.py reads 256 KiB at a time).
_ONE_READ = 256 * 1024


@dataclass(frozen=True, slots=True)
class Segment:
    """A piece of the response body: literal bytes or a range of the blob."""

    literal: bytes = b""
    blob_range: ByteRange | None = None

    @property
    def length(self) -> int:
        return self.blob_range.length if self.blob_range else len(self.literal)


class BlobResponse(Response):
    """A response that sends its segments from an open blob and always closes it."""

    def __init__(
        self,
        *,
        reader: BlobReader | None,
        status: int,
        headers: dict[str, str],
        segments: list[Segment],
        send_body: bool = True,
        accel_redirect: str | None = None,
        on_sent: Callable[[int], Awaitable[None]] | None = None,
    ) -> None:
        """`on_sent(bytes of the blob sent)` runs when the response is over, however it ended."""
        length = str(sum(s.length for s in segments))
        if accel_redirect is not None:
            # nginx sends the bytes (and their length) from its internal location.
            headers = {**headers, "x-accel-redirect": accel_redirect}
            length = "0"
        super().__init__(status_code=status, headers={**headers, "content-length": length})
        self.accel_redirect = accel_redirect
        self.reader = reader
        self.segments = segments
        self.send_body = send_body
        self.on_sent = on_sent
        self.sent = 0  # bytes of the blob handed to the server so far

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            if self.accel_redirect is not None:
                await send({"type": "http.response.body", "body": b""})
                self.sent = sum(s.length for s in self.segments)  # as for pathsend
                return
            if self.send_body and (path := self._whole_file(scope)) is not None:
                await send({"type": "http.response.pathsend", "path": path})
                # The server reads the file after this returns: what reaches the client is not
                # known here, so the whole file counts as sent.
                self.sent = sum(s.length for s in self.segments)
                return
            if self.send_body:
                await self._stream(receive, send)
            else:
                await send({"type": "http.response.body", "body": b""})
        except OSError:
            return  # the client went away; nothing more to send
        finally:
            # Also when the server cancels the request: the fd and the count must not be lost.
            with anyio.CancelScope(shield=True):
                DOWNLOADED_BYTES.inc(self.sent)
                if self.reader is not None:
                    await self.reader.close()
                if self.on_sent is not None:
                    await self.on_sent(self.sent)

    async def _stream(self, receive: Receive, send: Send) -> None:
        """The segments, until they are all sent or the client goes away.

        uvicorn and granian (ASGI 2.3) go on accepting body messages after the client left,
        without a word: only `receive()` says so (`http.disconnect`), so it is watched beside
        the sending. Not for a body of one read, which goes to the server in one message.
        """
        blob_bytes = sum(s.blob_range.length for s in self.segments if s.blob_range)
        if blob_bytes <= _ONE_READ:
            await self._send_segments(send)
            await send({"type": "http.response.body", "body": b""})
            return
        async with anyio.create_task_group() as group:

            async def stop_when_gone() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                group.cancel_scope.cancel()

            group.start_soon(stop_when_gone)
            try:
                await self._send_segments(send)
                await send({"type": "http.response.body", "body": b""})
            except OSError:
                pass  # the client went away (raised here, it would reach us as a group)
            finally:
                group.cancel_scope.cancel()

    def _whole_file(self, scope: Scope) -> str | None:
        """The blob's local path, when the body is the whole blob and the server can send it."""
        if self.reader is None or self.reader.path is None or self.status_code != 200:
            return None
        if "http.response.pathsend" not in scope.get("extensions", {}):
            return None
        match self.segments:
            case [Segment(blob_range=ByteRange(start=0, length=length))] if (
                length == self.reader.size
            ):
                return self.reader.path
        return None

    async def _send_segments(self, send: Send) -> None:
        for segment in self.segments:
            if segment.blob_range is None:
                await send(
                    {"type": "http.response.body", "body": segment.literal, "more_body": True}
                )
                continue
            assert self.reader is not None
            rng = segment.blob_range
            async for chunk in self.reader.chunks(rng.start, rng.length):
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                self.sent += len(chunk)


def byteranges(
    ranges: list[ByteRange], *, size: int, content_type: str
) -> tuple[str, list[Segment]]:
    """The multipart/byteranges content type and body segments for several ranges."""
    boundary = secrets.token_hex(16)
    segments: list[Segment] = []
    for index, rng in enumerate(ranges):
        lead = b"\r\n" if index else b""
        head = (
            f"--{boundary}\r\nContent-Type: {content_type}\r\n"
            f"Content-Range: bytes {rng.start}-{rng.end}/{size}\r\n\r\n"
        ).encode()
        segments += [Segment(literal=lead + head), Segment(blob_range=rng)]
    segments.append(Segment(literal=f"\r\n--{boundary}--\r\n".encode()))
    return f"multipart/byteranges; boundary={boundary}", segments
