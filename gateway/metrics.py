"""Gateway-specific Prometheus metrics, in the process-wide registry that `GET /metrics` serves.

Requests by route and status come from common.metrics.MetricsMiddleware (taskbus_http_*): the
pipeline puts its route template in `scope["route"]` for it. The names below are the ones the
Grafana dashboard (deploy/observability) reads.
"""

from dataclasses import dataclass

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

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

    def route(self) -> Route:
        """GET /metrics (in production MetricsMiddleware answers it first, same registry)."""

        async def metrics(_: Request) -> Response:
            return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

        return Route("/metrics", metrics, methods=["GET"])
