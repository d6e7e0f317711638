"""HTTP telemetry: requests and latency by route template, and the bytes moved over HTTP.

prometheus-fastapi-instrumentator's own metrics (`http_requests_total` by handler, method and
status class; `http_request_duration_seconds` by handler and method), fed by the edge once per
request instead of by the instrumentator's middleware, which looked each route up a second time.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from prometheus_client import Counter
from prometheus_fastapi_instrumentator import metrics as prometheus_metrics
from prometheus_fastapi_instrumentator.metrics import Info
from prometheus_fastapi_instrumentator.routing import get_route_name
from starlette.requests import Request
from starlette.types import Scope

# Bytes moved over HTTP: counted where they move (routes/files.py, responses.py).
UPLOADED_BYTES = Counter("filewallball_uploaded_bytes_total", "Bytes of files accepted")
DOWNLOADED_BYTES = Counter("filewallball_downloaded_bytes_total", "Bytes of files sent")
# Counted as they are stored, complete or not (the uploads themselves: adapters/metrics.py).
TUS_BYTES_RECEIVED = Counter(
    "filewallball_resumable_received_bytes_total", "Bytes of resumable (tus) uploads stored"
)

# Label values an outsider chooses are bounded, so no request (a key or not) can add series:
# the method is one of these or "other", the route a template or "unmatched".
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"
# Not measured: the scrape itself.
_UNMEASURED = frozenset({"/metrics"})
# Up to the longest transfers the alerts watch (p95 upload/download above 30 s).
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


@functools.cache
def http_metrics() -> tuple[Callable[[Info], None], ...]:
    """Requests and latency by route template, made once per process (a second app reuses them).

    Only the two that the alerts and the dashboard read: each metric costs every request its
    label lookups and, with several workers, a write to a shared file.
    """
    requests = prometheus_metrics.requests()
    latency = prometheus_metrics.latency(
        should_include_status=False, buckets=(*_LATENCY_BUCKETS, float("inf"))
    )
    assert requests is not None and latency is not None
    return requests, latency


class RequestMetrics:
    """Records one finished request in the HTTP metrics."""

    __slots__ = ("_metrics",)

    def __init__(self) -> None:
        self._metrics = http_metrics()

    def observe(self, scope: Scope, template: str | None, status: int, duration: float) -> None:
        """`template` is the matched route's, None when the request was refused before routing."""
        request = Request(scope)
        if template is None:
            # Refused before routing (401, 429...) or no route: look the template up.
            template = get_route_name(request, False)
        if template in _UNMEASURED:
            return
        method = scope["method"]
        info = Info(
            request=request,
            response=None,
            method=method if method in _METHODS else "other",
            modified_handler=template or UNMATCHED,
            modified_status=f"{str(status or 500)[0]}xx",
            modified_duration=duration,
        )
        for metric in self._metrics:
            metric(info)
