"""Dependency failures answer 503 (not 500) and overload is shed with 503, both problem+json."""

import asyncio

import httpx
from fastapi import FastAPI
from pymongo.errors import ExecutionTimeout, ServerSelectionTimeoutError
from starlette.requests import Request
from starlette.responses import Response

from common.unavailable import LoadShedder, install_failure_handlers


def _failing_app() -> FastAPI:
    app = FastAPI()
    install_failure_handlers(app)

    @app.get("/down")
    async def down() -> None:
        raise ServerSelectionTimeoutError("no servers")

    @app.get("/slow-query")
    async def slow_query() -> None:
        raise ExecutionTimeout("operation exceeded time limit")

    @app.get("/bug")
    async def bug() -> None:
        raise RuntimeError("unexpected")

    return app


async def test_mongo_failures_are_503_and_a_bug_500_without_escaping_the_app() -> None:
    # raise_app_exceptions stays on: an error that escaped the app would make uvicorn drop the
    # keep-alive connection, and here it would fail the test.
    transport = httpx.ASGITransport(app=_failing_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        for path in ("/down", "/slow-query"):
            response = await client.get(path)
            assert response.status_code == 503
            assert response.headers["content-type"] == "application/problem+json"
            assert int(response.headers["retry-after"]) > 0
        bug = await client.get("/bug")
        assert bug.status_code == 500
        assert bug.headers["content-type"] == "application/problem+json"


async def test_shedder_serves_its_limit_and_refuses_the_rest_but_never_probes() -> None:
    release = asyncio.Event()

    async def slow(request: Request) -> Response:
        await release.wait()
        return Response(b"ok")

    inner = FastAPI()
    inner.add_route("/work", slow)
    inner.add_route("/readyz", lambda _: Response(b"ready"))
    app = LoadShedder(inner, limit=2, queue=1, wait_s=0.2)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        pending = [asyncio.create_task(client.get("/work")) for _ in range(6)]
        probe = await client.get("/readyz")
        done, _ = await asyncio.wait(pending, timeout=1.0)
        shed = [t.result() for t in done]
        release.set()
        served = [r for r in await asyncio.gather(*pending) if r.status_code == 200]
    assert probe.status_code == 200
    assert len(shed) == 4  # accounting: 2 admitted, 4 refused (3 at once, 1 after its wait)
    assert all(r.status_code == 503 and r.headers["retry-after"] for r in shed)
    assert all(r.headers["content-type"] == "application/problem+json" for r in shed)
    assert len(served) == 2
