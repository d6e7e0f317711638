"""Background jobs: the TaskQueue port, and the registry that maps job names to handlers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol, TypeAlias

# JSON-safe on purpose: a payload crosses process boundaries on the Redis-backed queue.
JobPayload: TypeAlias = dict[str, str | int | None]
JobHandler: TypeAlias = Callable[[JobPayload], Awaitable[None]]


class TaskQueue(Protocol):
    """Runs named jobs later, at least once, retrying failures with backoff."""

    async def enqueue(self, name: str, *, key: str, payload: JobPayload) -> None:
        """Queue job `name`; a no-op while a job with the same (name, key) is queued or running.

        Handlers must be idempotent: a job may run again after a crash or a retry.
        """
        ...

    async def ping(self) -> None:
        """Raise DependencyUnavailable unless jobs can be queued now."""
        ...

    async def aclose(self) -> None:
        """Stop (at shutdown): let running jobs end or hand them back, close connections."""
        ...


class JobRegistry:
    """Job names and the handlers that run them, shared by enqueuers and workers."""

    def __init__(self) -> None:
        self._handlers: dict[str, JobHandler] = {}

    def register(self, name: str, handler: JobHandler) -> None:
        if name in self._handlers:
            raise ValueError(f"a handler for job {name!r} is already registered")
        self._handlers[name] = handler

    def get(self, name: str) -> JobHandler:
        """The handler of `name`; LookupError if there is none."""
        try:
            return self._handlers[name]
        except KeyError:
            raise LookupError(f"no handler registered for job {name!r}") from None

    def names(self) -> list[str]:
        return sorted(self._handlers)
