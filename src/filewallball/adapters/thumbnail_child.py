"""A thumbnail renderer's child process: libvips behind a memory limit, fed over a pipe.

`python -m filewallball.adapters.thumbnail_child MAX_PIXELS TIMEOUT_SECONDS MAX_MEMORY_BYTES
LOG_LEVEL` reads requests on stdin and answers each on stdout, one at a time, until stdin ends (its
parent is gone, or closed it). Frames are length-prefixed: a request is its header
(`REQUEST`: format, longest side, source length) and the source; a reply is its header
(`REPLY`: kind, length) and the thumbnail or a message. Before the first request the child
sends a READY reply, so that its start-up is not counted against an image's time limit.

The parent (adapters/thumbnail_pool.py) owns the time limit: it kills a child that has not
answered in time. The child owns the memory limit (RLIMIT_DATA, set on itself before libvips
is loaded): an image needing more makes an allocation fail here, not in the server.

Importing this module loads no libvips: the parent takes the protocol from it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import signal
import struct
import sys
from pathlib import Path
from typing import BinaryIO

from filewallball.domain.models import ImageFormat

REQUEST = struct.Struct(">BII")  # format (index in FORMATS), longest side, source length
REPLY = struct.Struct(">BI")  # kind, payload length
FORMATS = tuple(ImageFormat)
# Reply kinds; the payload is the thumbnail for OK, a UTF-8 message otherwise.
OK, FAILED, TIMED_OUT, OUT_OF_MEMORY, READY = range(5)


class _JsonLines(logging.Formatter):
    """The child's log records (libvips' warnings, via pyvips) as JSON lines, like the server's."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(
            {
                "event": record.getMessage(),
                "level": record.levelname.lower(),
                "logger": record.name,
                "pid": os.getpid(),
                "request_id": None,
            }
        )


class _InfoAsDebug(logging.Filter):
    """libvips narrates every image at info, through GLib and pyvips (about six lines a
    thumbnail: loader, sizes, shrinks, threadpool): those lines are debug for us."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


def quiet_libvips(level: int) -> None:
    """libvips' lines (logger `pyvips`) shown from warnings up, and its info lines as debug
    when `level` is debug; pyvips' own tracing of every call (`pyvips.*`) never."""
    logger = logging.getLogger("pyvips")
    logger.setLevel(logging.DEBUG if level <= logging.DEBUG else max(level, logging.WARNING))
    if not any(isinstance(f, _InfoAsDebug) for f in logger.filters):
        logger.addFilter(_InfoAsDebug())
    for name in ("pyvips.vobject", "pyvips.voperation", "pyvips.error", "pyvips.base"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _protocol_channel() -> BinaryIO:
    """The real stdout, for frames only; fd 1 becomes stderr so nothing else can write there."""
    channel = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return channel


def _limit_memory(max_bytes: int) -> None:
    # RLIMIT_DATA counts what the process writes to (heap, anonymous maps, thread stacks),
    # not the shared libraries it maps or address space reserved and never touched, so the
    # limit is about the memory an image makes libvips allocate.
    resource.setrlimit(resource.RLIMIT_DATA, (max_bytes, max_bytes))
    # Should a container's memory limit (a cgroup) run out first, the kernel kills the child,
    # not the server: the parent then reports the image failed and starts another child.
    with contextlib.suppress(OSError):
        Path("/proc/self/oom_score_adj").write_text("1000")


def _read_exactly(stream: BinaryIO, size: int) -> bytes | None:
    """`size` bytes, or None at the end of the stream (the parent is gone)."""
    data = stream.read(size)
    return data if data is not None and len(data) == size else None


def _send(channel: BinaryIO, kind: int, payload: bytes) -> None:
    channel.write(REPLY.pack(kind, len(payload)) + payload)


def main(argv: list[str]) -> int:
    max_pixels, timeout_seconds, max_memory = int(argv[0]), float(argv[1]), int(argv[2])
    level = logging.getLevelNamesMapping().get(argv[3] if len(argv) > 3 else "", logging.WARNING)
    # The terminal's Ctrl-C reaches the whole process group: the parent decides when we end.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    channel = _protocol_channel()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonLines())
    logging.basicConfig(level=level, handlers=[handler])
    quiet_libvips(level)
    logging.raiseExceptions = False  # a log line that cannot be written is dropped
    _limit_memory(max_memory)

    from filewallball.adapters.vips import VipsThumbnailer, is_out_of_memory
    from filewallball.domain.errors import ThumbnailFailed, ThumbnailTimedOut

    engine = VipsThumbnailer(max_pixels=max_pixels, timeout_seconds=timeout_seconds)
    requests = sys.stdin.buffer
    _send(channel, READY, b"")
    while (header := _read_exactly(requests, REQUEST.size)) is not None:
        format_index, longest_side, length = REQUEST.unpack(header)
        source = _read_exactly(requests, length)
        if source is None:
            break
        try:
            thumbnail = engine.render(
                source, longest_side=longest_side, format=FORMATS[format_index]
            )
        except ThumbnailTimedOut as error:
            _send(channel, TIMED_OUT, error.detail.encode())
        except ThumbnailFailed as error:
            kind = OUT_OF_MEMORY if is_out_of_memory(error) else FAILED
            _send(channel, kind, error.detail.encode())
        except MemoryError:
            _send(channel, OUT_OF_MEMORY, b"")
        else:
            _send(channel, OK, thumbnail)
        del source  # before the next request is read: two sources need not fit at once
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
