"""The gateway in front of the real auth and tasks services: the whole client journey."""

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from tests.support.auth import PASSWORD, unique_email
from tests.support.processes import ServiceProcess
from tests.support.system import running_system
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e


@dataclass
class Stack:
    client: httpx.AsyncClient
    tasks: ServiceProcess


@pytest.fixture(scope="module")
async def stack() -> AsyncIterator[Stack]:
    prefix = f"gws{uuid.uuid4().hex[:10]}"
    # The notifier is not started: it stands for a service that is down.
    async with (
        running_system(prefix, ["auth", "tasks", "gateway"]) as procs,
        httpx.AsyncClient(base_url=procs["gateway"].url, timeout=30) as client,
    ):
        yield Stack(client, procs["tasks"])


async def test_register_create_cache_patch_and_logout_through_the_gateway(stack: Stack) -> None:
    client = stack.client
    registered = await client.post(
        "/api/auth/register",
        json={"email": unique_email(), "password": PASSWORD, "name": "Gateway User"},
    )
    assert registered.status_code == 201, registered.text
    assert registered.headers["x-frame-options"] == "SAMEORIGIN"
    me = {"Authorization": f"Bearer {registered.json()['access_token']}"}

    created = await client.post("/api/tasks", headers=me, json={"title": "first"})
    assert created.status_code == 201, created.text
    path = f"/api/tasks/{created.json()['id']}"

    assert (await client.get(path, headers=me)).headers["x-cache"] == "MISS"
    # The TaskCreated event may still arrive and orphan that entry once more; after it, repeat
    # reads are served by the gateway.

    async def served_from_cache() -> httpx.Response | None:
        response = await client.get(path, headers=me)
        return response if response.headers["x-cache"] == "HIT" else None

    hit: httpx.Response = await eventually(served_from_cache)
    assert hit.json()["title"] == "first"
    etag = hit.headers["etag"]
    assert (await client.get(path, headers={**me, "If-None-Match": etag})).status_code == 304

    patched = await client.patch(path, headers={**me, "If-Match": etag}, json={"title": "second"})
    assert patched.status_code == 200, patched.text
    after = await client.get(path, headers=me)
    assert after.headers["x-cache"] == "MISS"
    assert after.json()["title"] == "second"

    assert (await client.post("/api/auth/logout", headers=me)).status_code == 204

    # The revocation travels auth -> outbox relay -> Kafka -> gateway consumer -> Redis.
    async def refused() -> bool:
        return (await client.get("/api/tasks", headers=me)).status_code == 401

    await eventually(refused)


async def test_combined_openapi_lists_both_services(stack: Stack) -> None:
    document = (await stack.client.get("/openapi.json")).json()
    assert {"/api/auth/login", "/api/tasks", "/api/tasks/{task_id}"} <= document["paths"].keys()
    assert document["info"]["x-taskbus-unavailable"] == ["notifier"]


async def test_a_dead_service_answers_503_quickly(stack: Stack) -> None:
    token = (
        await stack.client.post(
            "/api/auth/register",
            json={"email": unique_email(), "password": PASSWORD, "name": "U"},
        )
    ).json()["access_token"]
    response = await stack.client.get(
        "/api/notifications/preferences", headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"


async def test_the_tasks_services_trailing_slash_redirect_names_no_internal_address(
    stack: Stack,
) -> None:
    token = (
        await stack.client.post(
            "/api/auth/register",
            json={"email": unique_email(), "password": PASSWORD, "name": "U"},
        )
    ).json()["access_token"]
    reply = await stack.client.get("/api/tasks/", headers={"Authorization": f"Bearer {token}"})
    internal = stack.tasks.url.removeprefix("http://")
    assert all(internal not in value for value in reply.headers.values()), reply.headers
    # FastAPI's redirect_slashes: to the same API path, on the gateway.
    assert (reply.status_code, reply.headers["location"]) == (307, "/api/tasks")
