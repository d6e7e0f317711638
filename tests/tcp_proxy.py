"""A TCP forwarder in front of a real server: stop() is an outage, start() the recovery."""

from __future__ import annotations

import asyncio


class TcpProxy:
    """Forwards a local port to a server: stop() is an outage, start() the recovery."""

    def __init__(self, host: str, port: int, *, cut_after: int | None = None) -> None:
        self._target = (host, port)
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._transports: set[asyncio.WriteTransport] = set()
        self.port = 0
        # Once this many bytes went upstream (over every connection), the connection carrying
        # the next ones is cut there (a dropped connection mid-upload), once; `sent` counts every
        # byte forwarded upstream.
        self.cut_after = cut_after
        self.sent = 0
        self.cuts = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._forward, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for transport in self._transports:
            transport.abort()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await self._server.wait_closed()

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        self._transports.add(writer.transport)
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
            self._transports.add(upstream_writer.transport)
            await asyncio.gather(
                self._pipe(reader, upstream_writer, upstream=True),
                self._pipe(upstream_reader, writer),
            )
        finally:
            self._connections.discard(task)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, upstream: bool = False
    ) -> None:
        try:
            while data := await reader.read(65536):
                cut = upstream and self.cut_after is not None and not self.cuts
                if cut and self.cut_after is not None and self.sent + len(data) >= self.cut_after:
                    self.cuts += 1
                    writer.write(data[: self.cut_after - self.sent])
                    await writer.drain()
                    self.sent = self.cut_after
                    await asyncio.sleep(0.2)  # the server reads what came, then the cut
                    break
                writer.write(data)
                await writer.drain()
                if upstream:
                    self.sent += len(data)
        except OSError:
            pass
        finally:
            writer.transport.abort()
