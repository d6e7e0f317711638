"""uvicorn's httptools protocol with a deadline for a request's headers (FWB_HEADER_READ_TIMEOUT).

uvicorn closes a keep-alive connection that stays idle after a response, but holds forever a
connection that never sends a byte, or sends its headers a byte at a time: a few thousand of
those use up the process's file descriptors. Imported only when httptools is installed.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class HeaderDeadlineProtocol(HttpToolsProtocol):
    """Closes a connection whose next request's headers are not whole within the deadline.

    The deadline runs from the connection's opening, and from the first byte of each later
    request (the time between requests is uvicorn's own keep-alive timeout). Both are the
    config's `timeout_keep_alive`, which `serve` sets to FWB_HEADER_READ_TIMEOUT, as granian's
    `header_read_timeout` is one limit for all three.
    """

    _header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_deadline()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._header_deadline is None:
            self._arm_header_deadline()

    def on_headers_complete(self) -> None:
        self._cancel_header_deadline()
        super().on_headers_complete()

    def _arm_header_deadline(self) -> None:
        self._header_deadline = self.loop.call_later(self.timeout_keep_alive, self._headers_late)

    def _cancel_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_late(self) -> None:
        self._header_deadline = None
        if not self.transport.is_closing():
            self.transport.close()
