"""The gateway's route table: every proxied path, its service, and how the edge treats it.

Routing, the public (no token) routes, the cacheable routes, the rate-limit scope and the RED
metrics' route label all read this one table; settings only say where each service lives.
"""

from dataclasses import dataclass
from typing import Literal

from gateway.metrics import RouteTemplate
from gateway.settings import LimitScope

UpstreamName = Literal["auth", "tasks", "notifier"]

AUTH = RouteTemplate("/api/auth/*")
TASKS = RouteTemplate("/api/tasks*")
NOTIFICATIONS = RouteTemplate("/api/notifications*")


@dataclass(frozen=True, slots=True)
class Route:
    """One row: a path (exact, or every path under it when it ends in "/") and its treatment.

    `scope` picks the rate-limit policies: "api" routes need a token, "public" ones do not,
    and a POST to a "login" route counts against the login policies (other methods: public).
    """

    path: str
    upstream: UpstreamName
    template: RouteTemplate
    scope: LimitScope = "api"
    cacheable: bool = False

    @property
    def public(self) -> bool:
        """True if the route needs no token."""
        return self.scope != "api"

    def limit_scope(self, method: str) -> LimitScope:
        """The rate-limit scope of a request with `method` on this route."""
        return "public" if self.scope == "login" and method != "POST" else self.scope


ROUTES = (
    Route("/api/auth/register", "auth", AUTH, scope="public"),
    Route("/api/auth/login", "auth", AUTH, scope="login"),
    Route("/api/auth/refresh", "auth", AUTH, scope="public"),
    Route("/api/auth/logout", "auth", AUTH, scope="public"),
    Route("/api/auth/password-reset", "auth", AUTH, scope="public"),
    Route("/api/auth/password-reset/", "auth", AUTH, scope="public"),
    # Served by auth, so counted under auth's label.
    Route("/.well-known/jwks.json", "auth", AUTH, scope="public"),
    Route("/api/auth/", "auth", AUTH),
    Route("/api/tasks", "tasks", TASKS, cacheable=True),
    Route("/api/tasks/", "tasks", TASKS, cacheable=True),
    Route("/api/notifications", "notifier", NOTIFICATIONS),
    Route("/api/notifications/", "notifier", NOTIFICATIONS, cacheable=True),
)
# Every path under it is the pipeline's (an unknown one is its 404), not the Starlette app's.
API_ROOT = "/api"


class RouteTable:
    """Finds the row of a path: an exact row first, else the longest prefix row."""

    def __init__(self, routes: tuple[Route, ...]) -> None:
        self._exact = {r.path: r for r in routes if not r.path.endswith("/")}
        prefixes = sorted((r for r in routes if r.path.endswith("/")), key=lambda r: -len(r.path))
        self._prefixes = tuple((r.path, r) for r in prefixes)
        outside = {path for path in self._exact if not path.startswith(API_ROOT + "/")}
        self._outside_api = frozenset({API_ROOT, *outside})

    def match(self, path: str) -> Route | None:
        """The row serving `path`, or None (no such route)."""
        route = self._exact.get(path)
        if route is not None:
            return route
        return next((route for prefix, route in self._prefixes if path.startswith(prefix)), None)

    def proxied(self, path: str) -> bool:
        """True if `path` belongs to the pipeline (a row, or anywhere under /api)."""
        return path.startswith(API_ROOT + "/") or path in self._outside_api


TABLE = RouteTable(ROUTES)
