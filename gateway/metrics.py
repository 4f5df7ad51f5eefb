"""Gateway-specific Prometheus metrics, and the listener of its own that serves `GET /metrics`.

The gateway's port is public, so /metrics is not on it (404 there): it is served on
GATEWAY_METRICS_PORT, which only the scraper reaches (issue 12 item 7).

Requests by route and status come from common.metrics.MetricsMiddleware (taskbus_http_*): the
pipeline puts its route template in `scope["route"]` for it. The names below are the ones the
Grafana dashboard (deploy/observability) reads.
"""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from prometheus_client import REGISTRY, Counter, start_http_server

CACHE_RESULTS = Counter(
    "taskbus_gateway_cache_total", "Response cache results (hit, miss, bypass).", ["result"]
)
LIMITER_DECISIONS = Counter(
    "taskbus_gateway_ratelimit_decisions_total",
    "Rate-limit decisions per policy (admitted, limited, fail_open, fail_closed).",
    ["policy", "decision"],
)


@dataclass(frozen=True, slots=True)
class RouteTemplate:
    """What MetricsMiddleware reads from `scope["route"]` (Starlette's Route has `.path`)."""

    path: str


class Metrics:
    """The hot path's counters, with label children resolved once."""

    def __init__(self) -> None:
        # labels() takes a lock and builds a key per call; the hot path reuses the children.
        self._cache = {r: CACHE_RESULTS.labels(r) for r in ("hit", "miss", "bypass")}

    def cache(self, result: str) -> None:
        """Count one cache result."""
        self._cache[result].inc()

    def limiter(self, policies: list[str], decision: str) -> None:
        """Count one decision under every policy that took part in it."""
        for policy in policies or ["none"]:
            LIMITER_DECISIONS.labels(policy, decision).inc()


@asynccontextmanager
async def metrics_listener(host: str, port: int) -> AsyncIterator[None]:
    """Serve the process-wide registry on `host:port` (a thread of its own) while open."""
    # prometheus_client's own server: a scrape never queues behind API traffic on the loop.
    server, thread = start_http_server(port, host, REGISTRY)
    try:
        yield
    finally:
        await asyncio.to_thread(server.shutdown)
        server.server_close()
        thread.join()
