"""Structured logging: JSON lines on stdout, one event a line, each with a request_id."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger


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


class JsonFormatter(structlog.stdlib.ProcessorFormatter):
    """Renders stdlib records (uvicorn's, libraries') and structlog events alike as JSON."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.JSONRenderer(ensure_ascii=False),
            ],
            foreign_pre_chain=_shared_processors(),
        )


def configure_logging(level: str = "info") -> None:
    """Route structlog and the standard library through one JSON handler on stdout."""
    structlog.configure(
        processors=[*_shared_processors(), structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Not cached: tests (and a reconfigured app) must see the current configuration.
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers = []
        logging.getLogger(name).propagate = True
    # Alembic narrates every plugin it loads at info; its warnings still show.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # The access event comes from our own middleware, with the route template and request_id.
    logging.getLogger("uvicorn.access").disabled = True


def server_log_config(level: str = "info") -> dict[str, Any]:
    """A dictConfig for uvicorn or granian, applied in every worker before the app is built."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "filewallball.entrypoints.logs.JsonFormatter"}},
        "handlers": {
            "stdout": {
                "class": "logging.StreamHandler",
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
