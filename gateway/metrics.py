"""Prometheus metrics of one gateway process (own registry: apps in one process never clash)."""

from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


class Metrics:
    """Requests by route and status, cache results, limiter decisions."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "gateway_requests",
            "Requests answered, by upstream route and status",
            ["route", "status"],
            registry=self.registry,
        )
        self.cache = Counter(
            "gateway_cache", "Response cache results", ["result"], registry=self.registry
        )
        self.limiter = Counter(
            "gateway_ratelimit",
            "Rate-limit decisions (admitted, limited, fail_open, fail_closed)",
            ["decision"],
            registry=self.registry,
        )

        # labels() takes a lock and builds a key per call; the hot path reuses the children.
        self._children: dict[tuple[str, int], Any] = {}

    def request(self, route: str, status: int) -> None:
        """Count one answered request."""
        child = self._children.get((route, status))
        if child is None:
            child = self._children[route, status] = self.requests.labels(route, str(status))
        child.inc()

    def route(self) -> Route:
        """GET /metrics in the Prometheus text format."""

        async def metrics(_: Request) -> Response:
            return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

        return Route("/metrics", metrics, methods=["GET"])
