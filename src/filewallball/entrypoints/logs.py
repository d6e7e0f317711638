"""Structured logging: JSON lines on stdout, one event a line, each with a request_id.

Our own events go straight from structlog to stdout (orjson, one write a line): a request's
access line costs a few microseconds, where the standard library's handlers cost ~150 µs.
Other libraries' records (the server's, alembic's) take the standard library's path to the
same JSON shape.

Logging never breaks a request: a line that cannot be written (a full or closed log volume)
is dropped and counted (`filewallball_log_lines_dropped_total`), and the request goes on.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, BinaryIO

import orjson
import structlog
from prometheus_client import Counter
from structlog.typing import EventDict, Processor, WrappedLogger

from filewallball.adapters.thumbnail_child import quiet_libvips


def _ensure_request_id(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    # Lines outside a request (start-up, shutdown) carry the key too, so every line has it.
    event.setdefault("request_id", None)
    return event


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _ensure_request_id,
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
    ]


def _dumps(event: EventDict, **_: Any) -> bytes:
    # default=str: an odd value (a Path, a UUID) is written as text rather than lost.
    return orjson.dumps(event, default=str)


# OSError: the volume is full (ENOSPC) or gone (EIO, EPIPE); ValueError: the file was closed.
_WRITE_ERRORS = (OSError, ValueError)
LOG_LINES_DROPPED = Counter(
    "filewallball_log_lines_dropped_total",
    "Log lines lost because stdout could not be written (a full or closed log volume)",
)
_dropped = 0


def _drop() -> None:
    global _dropped
    _dropped += 1
    LOG_LINES_DROPPED.inc()


def dropped_lines() -> int:
    """How many log lines this process could not write."""
    return _dropped


class NamedBytesLogger(structlog.BytesLogger):
    """structlog's byte logger plus a name, for `add_logger_name` (it reads `logger.name`);
    a line it cannot write is dropped, never raised into the request that logged it."""

    def __init__(self, file: BinaryIO | None = None, *, name: str = "") -> None:
        super().__init__(file)
        self.name = name

    def msg(self, message: bytes) -> None:
        try:
            super().msg(message)
        except _WRITE_ERRORS:
            _drop()

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


class DroppingStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The standard library's stream handler, dropping (and counting) what it cannot write
    instead of printing a traceback to stderr, which is most often on the same full volume."""

    def handleError(self, record: logging.LogRecord) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, OSError) or getattr(self.stream, "closed", False):
            _drop()
            return
        super().handleError(record)  # a bug in a log call (a bad format): say so on stderr


class _LoggerFactory:
    def __init__(self, file: BinaryIO | None) -> None:
        self._file = file

    def __call__(self, *args: Any) -> NamedBytesLogger:
        # The current stdout, not the one at configuration time: it may have been replaced since
        # (a test runner's capture, typer's CliRunner), and the old one closed.
        file = self._file or getattr(sys.stdout, "buffer", None)
        return NamedBytesLogger(file, name=str(args[0]) if args else "filewallball")


class JsonFormatter(structlog.stdlib.ProcessorFormatter):
    """Renders stdlib records (uvicorn's, libraries') and structlog events alike as JSON."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.JSONRenderer(ensure_ascii=False),
            ],
            # A record's `extra` fields become keys of its line (the domain logs this way).
            foreign_pre_chain=[structlog.stdlib.ExtraAdder(), *_shared_processors()],
        )


class ConsoleFormatter(structlog.stdlib.ProcessorFormatter):
    """Renders stdlib records and structlog events as readable lines, for a terminal."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.dev.ConsoleRenderer(colors=False),
            ],
            foreign_pre_chain=[structlog.stdlib.ExtraAdder(), *_shared_processors()],
        )


def console_wanted(log_format: str) -> bool:
    """FWB_LOG_FORMAT: `console` always, `json` never, `auto` when stdout is a terminal."""
    return log_format == "console" or (log_format == "auto" and sys.stdout.isatty())


def _encoded(_: WrappedLogger, __: str, line: str) -> bytes:
    return line.encode("utf-8", "replace")


def configure_logging(
    level: str = "info", *, console: bool = False, file: BinaryIO | None = None
) -> None:
    """structlog straight to stdout as JSON (readable lines with `console`, for a terminal);
    the standard library through the same shape."""
    renderer: list[Processor] = (
        [structlog.dev.ConsoleRenderer(colors=False), _encoded]  # type: ignore[list-item]
        if console
        else [structlog.processors.JSONRenderer(serializer=_dumps)]
    )
    structlog.configure(
        processors=[*_shared_processors(), *renderer],
        logger_factory=_LoggerFactory(file),
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        # Not cached: tests (and a reconfigured app) must see the current configuration.
        cache_logger_on_first_use=False,
    )
    handler = DroppingStreamHandler(sys.stdout)
    handler.setFormatter(ConsoleFormatter() if console else JsonFormatter())
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers = []
        logging.getLogger(name).propagate = True
    # Alembic narrates every plugin it loads at info; its warnings still show.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # So does libvips every image, wherever it runs (the renderer's children do the same).
    quiet_libvips(logging.getLevelName(level.upper()))
    # The access event comes from our own middleware, with the route template and request_id.
    logging.getLogger("uvicorn.access").disabled = True


def server_log_config(level: str = "info", *, console: bool = False) -> dict[str, Any]:
    """A dictConfig for uvicorn or granian, applied in every worker before the app is built."""
    formatter = "ConsoleFormatter" if console else "JsonFormatter"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": f"filewallball.entrypoints.logs.{formatter}"}},
        "handlers": {
            "stdout": {
                "class": "filewallball.entrypoints.logs.DroppingStreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stdout",
            }
        },
        "loggers": {
            "": {"handlers": ["stdout"], "level": level.upper()},
            "uvicorn": {"handlers": [], "propagate": True},
            "uvicorn.error": {"handlers": [], "propagate": True},
            "uvicorn.access": {"handlers": [], "propagate": False},
            "_granian": {"handlers": [], "propagate": True},
            "granian.access": {"handlers": [], "propagate": False},
        },
    }
