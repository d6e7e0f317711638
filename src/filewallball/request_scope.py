"""Which request the running code serves: a token the HTTP edge sets as each request begins.

Adapters may keep per-request state against it (the near cache syncs once per request, on the
request's first read). Code outside a request (a job, the CLI) has no token, and such state
does not apply to it.
"""

from __future__ import annotations

from contextvars import ContextVar


class RequestToken:
    """One request; compared by identity."""

    __slots__ = ()


_current: ContextVar[RequestToken | None] = ContextVar("fwb_request", default=None)


def begin_request() -> RequestToken:
    """Mark the start of a request in the current context (one per request, at its edge)."""
    token = RequestToken()
    _current.set(token)
    return token


def current_request() -> RequestToken | None:
    return _current.get()
