"""Malware scanning with ClamAV's clamd, streaming each upload over INSTREAM as it arrives.

We speak the clamd protocol directly (a few dozen lines over asyncio streams) because no
maintained async client on PyPI streams a file chunk by chunk while it is being stored:
`clamd` (1.0.2, 2014) and `pyclamd` (0.4.0, 2017) are blocking and unmaintained, and
`aioclamd` (1.1.0) only scans a whole file-like object in one call.

Protocol (clamd(8)): after `zINSTREAM\\0`, each chunk goes as a 4-byte big-endian length and
the bytes; a zero length ends the stream; the NUL-terminated reply is `stream: OK`,
`stream: <signature> FOUND`, or an error such as `INSTREAM size limit exceeded. ERROR`.
"""

from __future__ import annotations

import asyncio
import struct
from contextlib import suppress
from dataclasses import dataclass
from urllib.parse import urlsplit

from filewallball.domain.errors import DependencyUnavailable
from filewallball.domain.ports import MalwareScanner, ScanResult, ScanSession, ScanVerdict

# Large chunks go as pieces of at most this, each drained before the next, so the bytes
# buffered for clamd stay small whatever chunk size the upload hands us.
PIECE_BYTES = 64 * 1024
# Replies are a signature name and a few words; anything longer is not clamd.
MAX_REPLY_BYTES = 4096
# Closing waits this long for the socket to go, then leaves it to the event loop.
CLOSE_TIMEOUT_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class _Address:
    """Where clamd listens: a TCP host and port, or a unix socket path."""

    host: str = ""
    port: int = 0
    path: str = ""

    @classmethod
    def parse(cls, address: str) -> _Address:
        parts = urlsplit(address)
        try:
            port = parts.port
        except ValueError:
            port = None
        plain = not (parts.query or parts.fragment or parts.username or parts.password)
        if plain and parts.scheme == "tcp" and parts.hostname and port and not parts.path:
            return cls(host=parts.hostname, port=port)
        if plain and parts.scheme == "unix" and not parts.netloc and parts.path.startswith("/"):
            return cls(path=parts.path)
        raise ValueError(f"bad clamd address {address!r}: expected tcp://host:port or unix:///path")

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.path:
            return await asyncio.open_unix_connection(self.path, limit=MAX_REPLY_BYTES)
        return await asyncio.open_connection(self.host, self.port, limit=MAX_REPLY_BYTES)


async def _read_reply(reader: asyncio.StreamReader) -> str:
    """One NUL-terminated reply; OSError when none comes (callers bound the wait)."""
    try:
        raw = await reader.readuntil(b"\0")
    except asyncio.IncompleteReadError as error:
        # A reply without its NUL was cut short: never trust it, whatever it says.
        said = error.partial.decode("utf-8", "replace")
        raise ConnectionError(f"clamd closed the connection mid-reply: {said!r}") from None
    except asyncio.LimitOverrunError:
        raise ConnectionError("clamd's reply is too long") from None
    return raw.rstrip(b"\0").decode("utf-8", "replace").strip()


def _verdict(reply: str) -> ScanResult:
    body = reply.removeprefix("stream: ")
    if body == reply:
        return _error(f"clamd: {reply}")
    if body == "OK":
        return ScanResult(ScanVerdict.CLEAN)
    signature = body.removesuffix(" FOUND").strip()
    if signature and signature != body:
        return ScanResult(ScanVerdict.INFECTED, signature=signature)
    return _error(f"clamd: {reply}")


def _error(detail: str) -> ScanResult:
    return ScanResult(ScanVerdict.ERROR, detail=detail)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with suppress(Exception):
        async with asyncio.timeout(CLOSE_TIMEOUT_SECONDS):
            await writer.wait_closed()


class ClamdSession(ScanSession):
    """One INSTREAM scan.

    Failures after `start()` (timeouts, resets, clamd's size limit, our `stream_max_bytes`)
    never raise from `feed`: it stops sending and `finish` reports them as an ERROR verdict,
    so the caller has one place to choose between failing closed and failing open.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        read_timeout: float,
        stream_max_bytes: int | None,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._read_timeout = read_timeout
        self._stream_max_bytes = stream_max_bytes
        self._sent = 0
        self._failure: str | None = None
        self._closed = False

    async def feed(self, chunk: bytes) -> None:
        """Send the chunk in pieces of at most 64 KiB; a failure is kept for `finish`."""
        # An empty chunk would be the zero length that ends the stream.
        if self._failure is not None or self._closed or not chunk:
            return
        self._sent += len(chunk)
        if self._stream_max_bytes is not None and self._sent > self._stream_max_bytes:
            self._failure = (
                f"the stream passes the scanner's limit of {self._stream_max_bytes} bytes"
            )
            return
        view = memoryview(chunk)
        for start in range(0, len(view), PIECE_BYTES):
            piece = view[start : start + PIECE_BYTES]
            self._writer.write(struct.pack(">I", len(piece)))
            self._writer.write(piece)
            if not await self._drain():
                return

    async def finish(self) -> ScanResult:
        """End the stream and read clamd's verdict; ERROR for anything but OK or FOUND."""
        if self._closed:
            return _error("the scan session is closed")
        try:
            if self._failure is None:
                self._writer.write(struct.pack(">I", 0))
                await self._drain()
            if self._failure is not None:
                return _error(self._failure)
            async with asyncio.timeout(self._read_timeout):
                return _verdict(await _read_reply(self._reader))
        except TimeoutError:  # before OSError: TimeoutError is one
            return _error(f"clamd did not answer within {self._read_timeout} s")
        except OSError as error:
            return _error(f"the connection to clamd failed: {error!r}")
        finally:
            await self.abort()

    async def abort(self) -> None:
        """Close the connection quietly; clamd drops a stream that never ended."""
        if not self._closed:
            self._closed = True
            await _close(self._writer)

    async def _drain(self) -> bool:
        """Wait until the written bytes are on their way; whether that worked."""
        try:
            async with asyncio.timeout(self._read_timeout):
                await self._writer.drain()
        except TimeoutError:  # before OSError: TimeoutError is one
            self._failure = f"clamd did not take the data within {self._read_timeout} s"
        except OSError as error:
            # Past its StreamMaxLength clamd answers and closes; the reset that our next write
            # meets then hides that answer (asyncio raises it before reading what came first).
            self._failure = f"the connection to clamd failed after {self._sent} bytes: {error!r}"
        return self._failure is None


class ClamdScanner(MalwareScanner):
    """Scans uploads with a clamd reached over TCP or a unix socket, one connection per file."""

    enabled = True

    def __init__(
        self,
        *,
        address: str,
        connect_timeout: float = 2.0,
        read_timeout: float = 30.0,
        stream_max_bytes: int | None = None,
    ) -> None:
        self._address = _Address.parse(address)
        self._display = address
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        # Match clamd's StreamMaxLength: past it clamd refuses the stream anyway, and
        # stopping ourselves saves sending the rest of a large upload to a closed socket.
        self._stream_max_bytes = stream_max_bytes

    async def start(self) -> ClamdSession:
        """Open an INSTREAM scan; DependencyUnavailable when clamd cannot be reached."""
        reader, writer = await self._connect()
        try:
            writer.write(b"zINSTREAM\0")
            async with asyncio.timeout(self._connect_timeout):
                await writer.drain()
        except (OSError, TimeoutError) as error:
            await _close(writer)
            raise self._unavailable(error) from error
        return ClamdSession(
            reader,
            writer,
            read_timeout=self._read_timeout,
            stream_max_bytes=self._stream_max_bytes,
        )

    async def ping(self) -> None:
        """Raise DependencyUnavailable unless clamd answers PING with PONG."""
        reader, writer = await self._connect()
        try:
            writer.write(b"zPING\0")
            async with asyncio.timeout(self._connect_timeout):
                await writer.drain()
                reply = await _read_reply(reader)
        except (OSError, TimeoutError) as error:
            raise self._unavailable(error) from error
        finally:
            await _close(writer)
        if reply != "PONG":
            raise DependencyUnavailable("clamd", f"clamd at {self._display} answered {reply!r}")

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            async with asyncio.timeout(self._connect_timeout):
                return await self._address.connect()
        except (OSError, TimeoutError) as error:
            raise self._unavailable(error) from error

    def _unavailable(self, error: BaseException) -> DependencyUnavailable:
        reason = "timed out" if isinstance(error, TimeoutError) else repr(error)
        return DependencyUnavailable("clamd", f"clamd at {self._display} is unreachable: {reason}")


class NoScanner(MalwareScanner):
    """The embedded default: no scanning. Callers check `enabled` and never call `start`."""

    enabled = False

    async def start(self) -> ScanSession:
        raise RuntimeError("scanning disabled")

    async def ping(self) -> None:
        return None
