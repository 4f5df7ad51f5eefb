"""Liveness and readiness probes: `/livez` (process answers), `/readyz` (dependencies do)."""

import asyncio
from collections.abc import Awaitable, Callable, Mapping

import orjson
from opentelemetry.instrumentation.utils import suppress_instrumentation
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from common.problems import problem_response

Check = Callable[[], Awaitable[object]]
CHECK_TIMEOUT_S = 2.0


async def run_checks(checks: Mapping[str, Check]) -> dict[str, str]:
    """Run every check concurrently; map each name to "ok" or the reason it failed."""

    async def one(check: Check) -> str:
        try:
            # Probes run every few seconds; their Mongo/Redis calls would bury real traces.
            with suppress_instrumentation():
                await asyncio.wait_for(check(), CHECK_TIMEOUT_S)
        except TimeoutError:
            return f"timed out after {CHECK_TIMEOUT_S}s"
        except Exception as exc:  # noqa: BLE001 - any failure is "not ready", reported by name
            return f"{type(exc).__name__}: {exc}"[:300]
        return "ok"

    names = list(checks)
    results = await asyncio.gather(*(one(checks[name]) for name in names))
    return dict(zip(names, results, strict=True))


def health_routes(checks: Callable[[], Mapping[str, Check]]) -> list[Route]:
    """Starlette routes for both probes; `checks` is read per call so the lifespan can fill it."""

    async def livez(_: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    async def readyz(_: Request) -> Response:
        results = await run_checks(checks())
        failing = sorted(name for name, result in results.items() if result != "ok")
        if not failing:
            return Response(
                orjson.dumps({"status": "ok", "checks": results}), media_type="application/json"
            )
        detail = "not ready: " + ", ".join(failing)
        return problem_response(503, detail, extra={"checks": results})

    return [Route("/livez", livez, methods=["GET"]), Route("/readyz", readyz, methods=["GET"])]
