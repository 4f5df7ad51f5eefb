"""Answers of a service that cannot serve right now: 503 problem+json with Retry-After.

- `install_failure_handlers(app, *errors)`: a dependency that is down (a pymongo connection or
  timeout failure, plus the service's own `errors`) answers 503, anything unexpected 500, both as
  problem+json, instead of a plain-text 500 and a dropped connection;
- `LoadShedder`: a concurrency limit with a short, bounded wait for a slot; past it a request is
  refused with 503 at once, so the admitted ones keep a bounded latency under overload.
"""

import asyncio

import structlog
from fastapi import FastAPI, Request
from pymongo.errors import ConnectionFailure, ExecutionTimeout
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common.problems import problem_response

log = structlog.get_logger(__name__)
RETRY_AFTER_S = 2
# ConnectionFailure covers AutoReconnect, NetworkTimeout and ServerSelectionTimeoutError.
MONGO_DOWN: tuple[type[Exception], ...] = (ConnectionFailure, ExecutionTimeout)
# Probes and scrapes must answer under overload: a shed readiness probe would take the replica
# out of its Service exactly when it is busiest.
_NEVER_SHED = frozenset({"/livez", "/readyz", "/metrics"})


def unavailable(
    detail: str, instance: str | None = None, retry_after_s: int = RETRY_AFTER_S
) -> Response:
    """A 503 problem+json telling the client when to retry."""
    headers = {"Retry-After": str(retry_after_s)}
    return problem_response(503, detail, instance=instance, headers=headers)


def install_failure_handlers(app: FastAPI, *errors: type[Exception]) -> None:
    """Dependency failures (pymongo's and `errors`) answer 503, anything unexpected 500."""

    async def on_unavailable(request: Request, exc: Exception) -> Response:
        log.warning("dependency unavailable", error=type(exc).__name__, detail=str(exc)[:200])
        return unavailable("a dependency is unavailable; retry shortly", request.url.path)

    for error in (*MONGO_DOWN, *errors):
        app.add_exception_handler(error, on_unavailable)
    app.add_middleware(UnexpectedErrors)


class UnexpectedErrors:
    """Any exception no handler took becomes a logged 500 problem+json, and goes no further.

    Not an `Exception` handler: Starlette re-raises after one answers, and uvicorn then closes
    the keep-alive connection, which the gateway's next pooled request would meet as a 502.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app; answer 500 if it fails before its response started."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception:
            if started:
                raise  # half a response is out: only dropping the connection is honest
            log.exception("unexpected error", path=scope["path"])
            response = problem_response(500, "unexpected error", instance=scope["path"])
            await response(scope, receive, send)


class LoadShedder:
    """Admits `limit` requests at a time; others wait up to `wait_s` for a slot, at most `queue`
    of them, and the rest are refused with 503 + Retry-After at once."""

    def __init__(self, app: ASGIApp, limit: int, queue: int, wait_s: float) -> None:
        self.app = app
        self._slots = asyncio.Semaphore(limit)
        self._queue = queue
        self._waiting = 0
        self._wait_s = wait_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve the request if a slot frees in time, else refuse it."""
        if scope["type"] != "http" or scope["path"] in _NEVER_SHED:
            await self.app(scope, receive, send)
            return
        if not await self._admitted():
            response = unavailable("the service is overloaded; retry shortly", scope["path"], 1)
            await response(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self._slots.release()

    async def _admitted(self) -> bool:
        if self._slots.locked() and self._waiting >= self._queue:
            return False
        self._waiting += 1
        try:
            async with asyncio.timeout(self._wait_s):
                await self._slots.acquire()
        except TimeoutError:
            return False
        finally:
            self._waiting -= 1
        return True
