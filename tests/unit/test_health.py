"""Readiness reports each failing dependency by name, as problem+json."""

import asyncio

from starlette.applications import Starlette
from starlette.testclient import TestClient

from common.health import Check, health_routes, run_checks


async def _ok() -> None:
    return None


async def _refused() -> None:
    raise ConnectionRefusedError("connection refused")


async def _hangs() -> None:
    await asyncio.Event().wait()


async def test_run_checks_names_failures_and_timeouts() -> None:
    results = await run_checks({"mongo": _ok, "kafka": _refused, "redis": _hangs})
    assert results["mongo"] == "ok"
    assert "ConnectionRefusedError" in results["kafka"]
    assert results["redis"].startswith("timed out")


def test_readyz_is_503_naming_the_failing_dependency() -> None:
    checks: dict[str, Check] = {"mongo": _ok, "kafka": _refused}
    client = TestClient(Starlette(routes=health_routes(lambda: checks)))
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["detail"] == "not ready: kafka"
    assert client.get("/livez").status_code == 200


def test_readyz_is_200_when_all_dependencies_answer() -> None:
    checks: dict[str, Check] = {"mongo": _ok}
    client = TestClient(Starlette(routes=health_routes(lambda: checks)))
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["checks"] == {"mongo": "ok"}
