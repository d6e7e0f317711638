"""Thumbnails rendered in child processes the server can kill: a hard time limit, a memory
limit, and no image that takes the server down with it.

libvips decodes WebP and AVIF frames in one call that nothing interrupts, and allocates what
an image's header asks for. So each render runs in a long-lived child process
(adapters/thumbnail_child.py) that limits its own memory; the parent kills a child that has
not answered in time, or that is in any doubt, and the next render starts a fresh one.
Children start on the first render, and end with their parent: they exit when their stdin
closes, which it does when the parent exits however it does.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
from dataclasses import dataclass

import anyio
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from filewallball.adapters import thumbnail_child as child_protocol
from filewallball.domain.errors import DependencyUnavailable, ThumbnailFailed, ThumbnailTimedOut
from filewallball.domain.models import ImageFormat
from filewallball.domain.ports import ThumbnailRenderer

# Thumbnails rendered at once, one child each; libvips spreads each one over its own
# threads, and more at once would only queue for the same cores while uploads wait.
CONCURRENCY = 2
# The child stops a streaming decoder (JPEG, PNG, TIFF) itself at the time limit and stays
# usable; this much later the parent kills it, whatever it is doing.
KILL_GRACE_SECONDS = 0.1
# Python and libvips loading: not counted against an image's time limit, but bounded.
START_TIMEOUT_SECONDS = 30.0
# glibc's malloc keeps an arena a thread, each reserving 64 MiB; two keep a child's memory
# close to what libvips asked for.
CHILD_ENV = {"MALLOC_ARENA_MAX": "2"}
# Ways a child ends that say "out of memory" more often than anything else.
MEMORY_SIGNALS = {signal.SIGKILL, signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS}
_PIPE_ERRORS = (
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
    anyio.IncompleteRead,
    OSError,
)


class _ChildGone(Exception):
    """The child's pipes closed before it answered: it died, or was killed."""


@dataclass(eq=False, slots=True)
class _Child:
    process: Process
    replies: BufferedByteReceiveStream
    closing: bool = False  # killed by aclose, not by what it was rendering

    async def send(self, header: bytes, source: bytes) -> None:
        assert self.process.stdin is not None
        try:
            await self.process.stdin.send(header)
            if source:
                await self.process.stdin.send(source)
        except _PIPE_ERRORS as error:
            raise _ChildGone from error

    async def receive(self) -> tuple[int, bytes]:
        try:
            kind, length = child_protocol.REPLY.unpack(
                await self.replies.receive_exactly(child_protocol.REPLY.size)
            )
            return kind, await self.replies.receive_exactly(length) if length else b""
        except _PIPE_ERRORS as error:
            raise _ChildGone from error

    async def kill(self) -> int | None:
        """SIGKILL and reap it (however the caller is being cancelled); its exit status."""
        with anyio.CancelScope(shield=True):
            if self.process.returncode is None:
                # Not Process.kill(): subprocess polls first, which would reap a child that
                # died by itself and leave asyncio, which waits for it too, no exit status.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.process.pid, signal.SIGKILL)
            await self.process.aclose()
        return self.process.returncode


class SubprocessThumbnailRenderer(ThumbnailRenderer):
    """libvips (adapters/vips.py) in up to CONCURRENCY child processes, each render within
    `timeout_seconds` (the child is killed after) and `max_memory_bytes` (the child's limit)."""

    def __init__(
        self,
        *,
        max_pixels: int = 100_000_000,
        timeout_seconds: float = 10.0,
        max_source_bytes: int = 256 * 1024 * 1024,
        max_memory_bytes: int = 1024**3,
    ) -> None:
        self._max_pixels = max_pixels
        self._timeout_seconds = timeout_seconds
        self._max_source_bytes = max_source_bytes
        self._max_memory_bytes = max_memory_bytes
        self._slots = anyio.CapacityLimiter(CONCURRENCY)
        self._idle: list[_Child] = []
        self._running: set[_Child] = set()

    async def render(self, source: bytes, *, longest_side: int, format: ImageFormat) -> bytes:
        """The thumbnail, or ThumbnailFailed (not an image, too many pixels, corrupt, too slow,
        too much memory, or it crashed its process)."""
        if longest_side < 1:
            raise ValueError(f"longest_side must be positive, not {longest_side}")
        if len(source) > self._max_source_bytes:
            raise ThumbnailFailed(f"the image is larger than {self._max_source_bytes} bytes")
        header = child_protocol.REQUEST.pack(
            child_protocol.FORMATS.index(format), longest_side, len(source)
        )
        async with self._slots:
            child, reused = (self._idle.pop(), True) if self._idle else (await self._start(), False)
            deadline = anyio.current_time() + self._timeout_seconds + KILL_GRACE_SECONDS
            while True:
                try:
                    kind, payload = await self._exchange(child, header, source, deadline)
                    break
                except _ChildGone as gone:
                    if not reused:
                        raise ThumbnailFailed(str(gone)) from None
                # An idle child can die unseen (killed, the OOM killer): the image gets one
                # fresh child, within the same time limit.
                child, reused = await self._start(), False
        return self._result(kind, payload)

    async def aclose(self) -> None:
        """Stop every child; a render still running fails as unavailable, not as the image's
        fault. A later render starts new children."""
        idle, self._idle = self._idle, []
        running = list(self._running)
        for child in running:
            child.closing = True
        for child in idle + running:
            await child.kill()

    async def _start(self) -> _Child:
        process = await anyio.open_process(
            [
                sys.executable,
                "-m",
                child_protocol.__name__,
                str(self._max_pixels),
                repr(self._timeout_seconds),
                str(self._max_memory_bytes),
                # The server's level (FWB_LOG_LEVEL, as entrypoints/logs.py set it).
                logging.getLevelName(logging.getLogger().getEffectiveLevel()),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,  # the child's log lines (JSON) join the server's
            env={**os.environ, **CHILD_ENV},
        )
        assert process.stdout is not None
        child = _Child(process, BufferedByteReceiveStream(process.stdout))
        self._running.add(child)
        try:
            with anyio.fail_after(START_TIMEOUT_SECONDS):
                kind, _ = await child.receive()
            if kind != child_protocol.READY:
                raise _ChildGone(f"it answered {kind} before its first request")
        except (TimeoutError, _ChildGone) as error:
            status = await child.kill()
            self._running.discard(child)
            raise DependencyUnavailable(
                f"the thumbnail renderer process did not start (exit status {status});"
                f" FWB_THUMBNAIL_MAX_MEMORY_BYTES={self._max_memory_bytes} may be too low"
            ) from error
        except BaseException:
            await child.kill()
            self._running.discard(child)
            raise
        return child

    async def _exchange(
        self, child: _Child, header: bytes, source: bytes, deadline: float
    ) -> tuple[int, bytes]:
        """Send one request and take its reply; the child back to the idle ones if it is fit."""
        self._running.add(child)
        try:
            with anyio.fail_after(max(deadline - anyio.current_time(), 0)):
                await child.send(header, source)
                kind, payload = await child.receive()
        except TimeoutError:
            await self._discard(child)
            raise self._too_slow() from None
        except _ChildGone:
            status = await self._discard(child)
            if child.closing:
                raise DependencyUnavailable("the thumbnail renderer is shutting down") from None
            raise _ChildGone(self._death(status)) from None
        except BaseException:  # cancelled mid-request: the child's pipes are out of step
            await self._discard(child)
            raise
        if kind == child_protocol.OUT_OF_MEMORY:
            await self._discard(child)  # its heap may never shrink back
        else:
            self._running.discard(child)
            self._idle.append(child)
        return kind, payload

    async def _discard(self, child: _Child) -> int | None:
        status = await child.kill()
        self._running.discard(child)
        return status

    def _result(self, kind: int, payload: bytes) -> bytes:
        if kind == child_protocol.OK:
            return payload
        if kind == child_protocol.TIMED_OUT:
            raise self._too_slow()
        if kind == child_protocol.OUT_OF_MEMORY:
            raise ThumbnailFailed(
                f"the image needs more memory than {self._max_memory_bytes} bytes"
            )
        raise ThumbnailFailed(payload.decode(errors="replace"))

    def _death(self, status: int | None) -> str:
        if status is not None and status < 0 and -status in MEMORY_SIGNALS:
            return (
                f"rendering killed its process ({signal.Signals(-status).name}): the image may"
                f" need more memory than {self._max_memory_bytes} bytes"
            )
        return f"rendering ended its process (exit status {status})"

    def _too_slow(self) -> ThumbnailTimedOut:
        return ThumbnailTimedOut(f"rendering took longer than {self._timeout_seconds} seconds")
