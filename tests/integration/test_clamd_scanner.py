"""ClamdScanner against a real clamd that knows one signature (EICAR), plus scripted bad peers."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager, suppress

import pytest

from filewallball.adapters.clamd import ClamdScanner, NoScanner
from filewallball.domain.errors import DependencyUnavailable
from filewallball.domain.ports import ScanResult, ScanVerdict
from tests.clamd_server import (
    SIGNATURE_NAME,
    STREAM_MAX_BYTES,
    ClamdFailed,
    ClamdServer,
    find_clamd,
    start_clamd,
)
from tests.conftest import unavailable

MiB = 1024 * 1024
# Built from two halves so that this source file is not itself flagged by a scanner.
EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$" + rb"EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


def _start(binary: str) -> ClamdServer:
    try:
        return start_clamd(binary)
    except ClamdFailed as error:
        unavailable(str(error))
        raise


@pytest.fixture(scope="module")
def clamd_binary() -> str:
    binary = find_clamd()
    if binary is None:
        unavailable("clamd is not installed (the Debian package clamav-daemon provides it)")
    return str(binary)


@pytest.fixture(scope="module")
def clamd(clamd_binary: str) -> Iterator[ClamdServer]:
    """One clamd shared by the module: it starts fast, but not for free."""
    server = _start(clamd_binary)
    yield server
    server.stop()


@pytest.fixture
def scanner(clamd: ClamdServer) -> ClamdScanner:
    return ClamdScanner(address=clamd.tcp_address, read_timeout=10)


async def _scan(scanner: ClamdScanner, chunks: Iterable[bytes]) -> ScanResult:
    session = await scanner.start()
    for chunk in chunks:
        await session.feed(chunk)
    return await session.finish()


def _clean(size: int, chunk: int = MiB) -> Iterator[bytes]:
    line = b"nothing to see here, just an ordinary line of text\n"
    block = line * (chunk // len(line) + 1)
    for start in range(0, size, chunk):
        yield block[: min(chunk, size - start)]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _assert_infected(result: ScanResult) -> None:
    assert result.verdict is ScanVerdict.INFECTED, result
    assert result.signature is not None
    # clamd marks signatures from unsigned databases as ".UNOFFICIAL".
    assert result.signature.startswith(SIGNATURE_NAME)


def test_clean_data_has_the_size_asked_for() -> None:
    assert sum(map(len, _clean(3 * MiB + 17, chunk=256 * 1024))) == 3 * MiB + 17


async def test_eicar_is_infected(scanner: ClamdScanner) -> None:
    _assert_infected(await _scan(scanner, [EICAR]))


async def test_eicar_in_tiny_chunks_inside_other_bytes_is_infected(scanner: ClamdScanner) -> None:
    data = b"A" * 1000 + EICAR + b"Z" * 1000
    _assert_infected(await _scan(scanner, [data[i : i + 3] for i in range(0, len(data), 3)]))


async def test_a_clean_file_of_a_few_mib_in_large_chunks_is_clean(scanner: ClamdScanner) -> None:
    result = await _scan(scanner, _clean(3 * MiB + 17))
    assert result == ScanResult(ScanVerdict.CLEAN)


async def test_eicar_after_megabytes_of_clean_bytes_is_found(scanner: ClamdScanner) -> None:
    _assert_infected(await _scan(scanner, [*_clean(2 * MiB), EICAR]))


async def test_empty_chunks_do_not_end_the_stream(scanner: ClamdScanner) -> None:
    _assert_infected(await _scan(scanner, [b"", EICAR[:10], b"", EICAR[10:]]))


async def test_concurrent_sessions_get_their_own_verdicts(scanner: ClamdScanner) -> None:
    results = await asyncio.gather(
        _scan(scanner, _clean(MiB)),
        _scan(scanner, [EICAR[:30], EICAR[30:]]),
        _scan(scanner, _clean(2 * MiB, chunk=4096)),
    )
    assert [r.verdict for r in results] == [
        ScanVerdict.CLEAN,
        ScanVerdict.INFECTED,
        ScanVerdict.CLEAN,
    ]


@pytest.mark.parametrize("size", [STREAM_MAX_BYTES + 1, 3 * STREAM_MAX_BYTES])
async def test_past_clamds_stream_limit_is_an_error_never_clean(
    scanner: ClamdScanner, size: int
) -> None:
    started = time.monotonic()
    result = await _scan(scanner, _clean(size, chunk=256 * 1024))
    assert result.verdict is ScanVerdict.ERROR, result
    assert result.detail
    assert time.monotonic() - started < 5


async def test_clamds_own_limit_is_inclusive(scanner: ClamdScanner) -> None:
    # So stream_max_bytes can simply be set to clamd's StreamMaxLength.
    assert (await _scan(scanner, _clean(STREAM_MAX_BYTES))).verdict is ScanVerdict.CLEAN


async def test_our_stream_limit_stops_sending_and_is_an_error(clamd: ClamdServer) -> None:
    limited = ClamdScanner(address=clamd.tcp_address, stream_max_bytes=STREAM_MAX_BYTES)
    assert (await _scan(limited, _clean(STREAM_MAX_BYTES))).verdict is ScanVerdict.CLEAN
    result = await _scan(limited, [*_clean(STREAM_MAX_BYTES), b"x"])
    assert result.verdict is ScanVerdict.ERROR
    assert result.detail is not None and str(STREAM_MAX_BYTES) in result.detail
    result = await _scan(limited, [*_clean(STREAM_MAX_BYTES), EICAR])
    assert result.verdict is ScanVerdict.ERROR


async def test_ping(scanner: ClamdScanner) -> None:
    await scanner.ping()


async def test_unix_socket_address(clamd: ClamdServer) -> None:
    over_unix = ClamdScanner(address=clamd.unix_address)
    await over_unix.ping()
    _assert_infected(await _scan(over_unix, [EICAR]))
    assert (await _scan(over_unix, _clean(MiB))).verdict is ScanVerdict.CLEAN


async def test_abort_closes_quietly_and_clamd_carries_on(scanner: ClamdScanner) -> None:
    session = await scanner.start()
    await session.feed(EICAR)
    await session.abort()
    await session.abort()
    await session.feed(b"more")
    assert (await session.finish()).verdict is ScanVerdict.ERROR
    await scanner.ping()


@pytest.mark.parametrize("address", ["tcp", "unix"])
async def test_unreachable_clamd_raises_dependency_unavailable_quickly(address: str) -> None:
    target = (
        f"tcp://127.0.0.1:{_closed_port()}" if address == "tcp" else "unix:///nonexistent/clamd.ctl"
    )
    scanner = ClamdScanner(address=target, connect_timeout=2)
    started = time.monotonic()
    with pytest.raises(DependencyUnavailable) as raised:
        await scanner.start()
    assert raised.value.dependency == "clamd"
    with pytest.raises(DependencyUnavailable):
        await scanner.ping()
    assert time.monotonic() - started < 1


async def test_clamd_dying_mid_stream_is_an_error_then_unavailable(clamd_binary: str) -> None:
    server = _start(clamd_binary)
    try:
        scanner = ClamdScanner(address=server.tcp_address, read_timeout=5)
        session = await scanner.start()
        await session.feed(b"x" * MiB)
        server.process.kill()
        await asyncio.to_thread(server.process.wait)
        await session.feed(b"x" * MiB)
        await session.feed(EICAR)
        result = await session.finish()
        assert result.verdict is ScanVerdict.ERROR, result
        with pytest.raises(DependencyUnavailable):
            await scanner.start()
    finally:
        server.stop()


@asynccontextmanager
async def _peer(reply: bytes | None, *, close: bool = False) -> AsyncIterator[str]:
    """A fake clamd: reads a PING or a whole stream, sends `reply` (None: never), maybe closes."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received = b""
        with suppress(ConnectionError):
            while received != b"zPING\0" and not received.endswith(b"\0\0\0\0"):
                data = await reader.read(64 * 1024)
                if not data:
                    break
                received += data
            if reply is not None:
                writer.write(reply)
                await writer.drain()
            if not close:
                while await reader.read(64 * 1024):
                    pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"tcp://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    ("reply", "close"),
    [
        (b"stream: Can't allocate memory ERROR\0", False),
        (b"INSTREAM size limit exceeded. ERROR\0", True),
        (b"stream: FOUND\0", False),
        (b"stream: \0", False),
        (b"OK\0", False),
        (b"stream: OK", False),  # no NUL: the reply never ends
        (b"stream: OK", True),  # cut short
        (b"x" * 10_000, False),
        (b"", True),
        (None, False),
    ],
)
async def test_anything_but_ok_or_found_is_an_error(reply: bytes | None, close: bool) -> None:
    async with _peer(reply, close=close) as address:
        scanner = ClamdScanner(address=address, read_timeout=0.5)
        started = time.monotonic()
        result = await _scan(scanner, [EICAR])
    assert result.verdict is ScanVerdict.ERROR, result
    assert result.detail
    assert time.monotonic() - started < 2


async def test_a_fake_found_reply_is_parsed() -> None:
    async with _peer(b"stream: Some.Signature-1 FOUND\0") as address:
        result = await _scan(ClamdScanner(address=address), [b"data"])
    assert result == ScanResult(ScanVerdict.INFECTED, signature="Some.Signature-1")


async def test_a_silent_peer_fails_ping_within_the_timeout() -> None:
    async with _peer(None) as address:
        scanner = ClamdScanner(address=address, connect_timeout=0.3)
        started = time.monotonic()
        with pytest.raises(DependencyUnavailable):
            await scanner.ping()
    assert time.monotonic() - started < 2


async def test_a_ping_answered_wrongly_is_unavailable() -> None:
    async with _peer(b"PANG\0") as address:
        with pytest.raises(DependencyUnavailable):
            await ClamdScanner(address=address).ping()


@pytest.mark.parametrize(
    "address",
    [
        "",
        "127.0.0.1:3310",
        "clamd:3310",
        "tcp://127.0.0.1",
        "tcp://:3310",
        "tcp://127.0.0.1:0",
        "tcp://127.0.0.1:99999",
        "tcp://127.0.0.1:port",
        "tcp://127.0.0.1:3310/path",
        "tcp://user@127.0.0.1:3310",
        "http://127.0.0.1:3310",
        "unix://",
        "unix://relative/clamd.ctl",
        "unix:relative.ctl",
        "unix:///run/clamav/clamd.ctl?x=1",
    ],
)
def test_bad_addresses_are_rejected(address: str) -> None:
    with pytest.raises(ValueError, match="clamd address"):
        ClamdScanner(address=address)


@pytest.mark.parametrize(
    "address",
    [
        "tcp://127.0.0.1:3310",
        "tcp://clamd.svc:3310",
        "tcp://[::1]:3310",
        "unix:///run/clamav/clamd.ctl",
    ],
)
def test_good_addresses_are_accepted_without_connecting(address: str) -> None:
    assert ClamdScanner(address=address).enabled


async def test_no_scanner_is_disabled_and_refuses_to_start() -> None:
    scanner = NoScanner()
    assert scanner.enabled is False
    assert await scanner.ping() is None
    with pytest.raises(RuntimeError, match="scanning disabled"):
        await scanner.start()
