"""Prometheus metrics: RED per route for every HTTP service, and `GET /metrics` in front of it."""

import time
from collections.abc import Awaitable, Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from common.asgi import StatusRecorder

HTTP_REQUESTS = Counter(
    "taskbus_http_requests_total",
    "HTTP requests served, by route template and status.",
    ["service", "method", "route", "status"],
)
HTTP_DURATION = Histogram(
    "taskbus_http_request_duration_seconds",
    "Time from request start to the last body byte, by route template.",
    ["service", "method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
OUTBOX_BACKLOG = Gauge(
    "taskbus_outbox_backlog",
    "Events written to an outbox but not yet published to Kafka.",
    ["service"],
)
# Probes and scrapes would drown the signal; they are served but not counted.
_UNCOUNTED = frozenset({"/livez", "/readyz", "/metrics"})


class MetricsMiddleware:
    """Pure ASGI middleware (no per-request Starlette objects) recording rate, errors, duration."""

    def __init__(self, app: ASGIApp, service: str, serve_metrics: bool = True) -> None:
        self.app = app
        self.service = service
        # False where /metrics has a listener of its own (the gateway: its port is public).
        self.serve_metrics = serve_metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Time the request and label it with the matched route template, never the raw path."""
        if (
            self.serve_metrics
            and scope["type"] == "http"
            and scope["path"] == "/metrics"
            and scope["method"] == "GET"
        ):
            await _metrics_response(scope, receive, send)
            return
        if scope["type"] != "http" or scope["path"] in _UNCOUNTED:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        recorder = StatusRecorder(send)
        try:
            await self.app(scope, receive, recorder)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope["method"]
            HTTP_REQUESTS.labels(self.service, method, template, str(recorder.status)).inc()
            HTTP_DURATION.labels(self.service, method, template).observe(
                time.perf_counter() - started
            )


async def _metrics_response(scope: Scope, receive: Receive, send: Send) -> None:
    response = Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
    await response(scope, receive, send)


class BacklogGauge:
    """Keeps `taskbus_outbox_backlog` current from a relay loop without counting every round.

    Counting scans the outbox flag (a full scan on FerretDB), so it runs at most every `every_s`.
    """

    def __init__(
        self, service: str, count: Callable[[], Awaitable[int]], every_s: float = 10.0
    ) -> None:
        self._gauge = OUTBOX_BACKLOG.labels(service)
        self._count = count
        self._every_s = every_s
        self._next = 0.0

    def observed(self, value: int) -> None:
        """A count made elsewhere (a relay's sweep): shown, and the next recount put off."""
        self._gauge.set(value)
        self._next = time.monotonic() + self._every_s

    async def refresh(self) -> None:
        """Recount if the last count is older than the interval."""
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self._every_s
        self._gauge.set(await self._count())
