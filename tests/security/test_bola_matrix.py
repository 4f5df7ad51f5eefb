"""BOLA matrix (OWASP API1:2023, issue 12): user B acting on user A's data, route by route.

The routes come from the gateway's /openapi.json at test time, so a new route is judged the day
it appears: an operation this file does not classify fails the test, and so does a route with a
path parameter that has no recipe here. For every operation on an owned resource id, B gets the
very 404 a nonexistent id gets (not 403: no oracle that the id exists, not 200) and A's resource
reads back unchanged; every caller-scoped operation (lists, stats, search, profile,
preferences) shows B none of A's data and leaves A's unchanged. The gateway's response cache
is in the path: B's request right after A's cached GET never sees A's answer.
"""

import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.support.auth import bearer, register
from tests.support.system import running_system

pytestmark = pytest.mark.e2e
NO_CACHE = {"Cache-Control": "no-cache"}  # the owner's read-backs judge the service, not a cache
NOBODYS_TASK = "0" * 24

# Operations on an owned resource named in the path: what B sends (body, If-Match from A's ETag).
OWNED: dict[tuple[str, str], dict[str, Any]] = {
    ("GET", "/api/tasks/{task_id}"): {},
    ("PATCH", "/api/tasks/{task_id}"): {"json": {"title": "pwned", "status": "done"}},
    ("DELETE", "/api/tasks/{task_id}"): {},
}
# Operations on the caller's own data, chosen by the token alone (no id to guess).
CALLER_READS = {
    ("GET", "/api/tasks"),
    ("GET", "/api/tasks/stats"),
    ("GET", "/api/auth/me"),
    ("GET", "/api/notifications/preferences"),
}
CALLER_WRITES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/api/tasks"): {"json": {"title": "B's own"}},
    ("PATCH", "/api/auth/me"): {"json": {"name": "B renamed"}},
    ("PUT", "/api/notifications/preferences"): {"json": {"reminders": True}},
}
# Session operations end only the caller's own sessions (tests/e2e/test_auth_flow.py).
CALLER_SESSIONS = {("POST", "/api/auth/logout"), ("POST", "/api/auth/logout-all")}
# No user's data: sign-up, sign-in, reset by mailed token, keys, probes, the specs and docs.
PUBLIC = {
    ("POST", "/api/auth/register"),
    ("POST", "/api/auth/login"),
    ("POST", "/api/auth/refresh"),
    ("POST", "/api/auth/password-reset"),
    ("POST", "/api/auth/password-reset/confirm"),
    ("GET", "/.well-known/jwks.json"),
    ("GET", "/livez"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/asyncapi.json"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
}
# Variants of the list that must stay the caller's: filters, sort, search for A's own words.
LIST_QUERIES = ("", "?status=todo", "?sort=priority&limit=100", "?q={secret}", "?tag={secret}")
_METHODS = {"get", "put", "post", "patch", "delete", "head", "options"}
_PARAM = re.compile(r"\{([^}]+)\}")


@dataclass
class Owner:
    """A user, their token and two tasks of theirs with a word nobody else uses."""

    id: str
    email: str
    headers: dict[str, str]
    secret: str
    task: dict[str, Any]
    body: dict[str, Any]  # what created `task`, under the Idempotency-Key `secret`


@dataclass
class Stack:
    gateway: httpx.AsyncClient
    spec: dict[str, Any]
    a: Owner
    b: Owner


async def _owner(client: httpx.AsyncClient, priority: str) -> Owner:
    registered = await register(client)
    headers = bearer(registered["access_token"])
    secret = f"secret{uuid.uuid4().hex[:12]}"
    body = {"title": f"{secret} plans", "description": secret, "tags": [secret]}
    body["priority"] = priority  # so even A's and B's counts differ
    keyed = {**headers, "Idempotency-Key": secret}
    created = await client.post("/api/tasks", json=body, headers=keyed)
    assert created.status_code == 201, created.text
    second = await client.post("/api/tasks", json=body, headers=headers)  # a list of two pages
    assert second.status_code == 201, second.text
    user = registered["user"]
    return Owner(user["id"], user["email"], headers, secret, created.json(), body)


@pytest.fixture(scope="module")
async def stack() -> AsyncIterator[Stack]:
    prefix = f"bola{uuid.uuid4().hex[:10]}"
    async with (
        running_system(prefix, ["auth", "tasks", "notifier", "gateway"]) as procs,
        httpx.AsyncClient(base_url=procs["gateway"].url, timeout=30) as client,
    ):
        spec = (await client.get("/openapi.json")).json()
        a, b = await _owner(client, "urgent"), await _owner(client, "low")
        put = "/api/notifications/preferences"
        saved = await client.put(put, json={"reminders": False}, headers=a.headers)
        assert saved.status_code == 200, saved.text
        yield Stack(client, spec, a, b)


def operations(spec: dict[str, Any]) -> set[tuple[str, str]]:
    """Every (METHOD, path template) the gateway's spec documents."""
    return {
        (method.upper(), path)
        for path, item in spec["paths"].items()
        for method in item
        if method in _METHODS
    }


def _fill(template: str, ids: dict[str, str]) -> str:
    """The template with each path parameter replaced; an unknown parameter fails the test."""
    unknown = set(_PARAM.findall(template)) - ids.keys()
    assert not unknown, f"{template}: no resource of user A stands for {sorted(unknown)}"
    return _PARAM.sub(lambda m: ids[m.group(1)], template)


def _a_ids(stack: Stack) -> dict[str, str]:
    return {"task_id": stack.a.task["id"]}


def _leaks(owner: Owner, text: str) -> list[str]:
    """Which of the owner's identifiers appear in `text`."""
    return [v for v in (owner.id, owner.email, owner.secret, owner.task["id"]) if v in text]


async def _owner_view(stack: Stack) -> dict[str, str]:
    """Everything of A's the matrix might touch, read as A past the cache."""
    a, client = stack.a, stack.gateway
    paths = [
        f"/api/tasks/{a.task['id']}",
        "/api/tasks",
        "/api/tasks/stats",
        "/api/auth/me",
        "/api/notifications/preferences",
    ]
    views = {}
    for path in paths:
        read = await client.get(path, headers={**a.headers, **NO_CACHE})
        assert read.status_code == 200, (path, read.text)
        views[path] = read.text
    return views


def test_every_documented_operation_is_classified(stack: Stack) -> None:
    known = {*OWNED, *CALLER_READS, *CALLER_WRITES, *CALLER_SESSIONS, *PUBLIC}
    unclassified = operations(stack.spec) - known
    assert not unclassified, f"decide whose data these touch, then add them here: {unclassified}"
    with_parameters = {op for op in operations(stack.spec) if _PARAM.search(op[1])}
    assert with_parameters <= OWNED.keys(), with_parameters - OWNED.keys()
    assert OWNED.keys() <= operations(stack.spec)  # a stale row would test nothing


async def test_b_gets_the_nonexistent_ids_404_on_every_owned_route_and_a_is_unchanged(
    stack: Stack,
) -> None:
    before = await _owner_view(stack)
    a_task = f"/api/tasks/{stack.a.task['id']}"
    etag = (await stack.gateway.get(a_task, headers=stack.a.headers)).headers["etag"]
    owned = sorted(op for op in operations(stack.spec) if _PARAM.search(op[1]))
    assert owned, "the spec documents no route on an owned id: nothing was tested"
    for method, template in owned:
        recipe = {**OWNED[(method, template)]}
        headers = {**stack.b.headers, "If-Match": etag}
        theirs = await stack.gateway.request(
            method, _fill(template, _a_ids(stack)), headers=headers, **recipe
        )
        nobodys = await stack.gateway.request(
            method, _fill(template, {"task_id": NOBODYS_TASK}), headers=headers, **recipe
        )
        assert theirs.status_code == 404, (method, template, theirs.text)
        assert nobodys.status_code == 404, (method, template, nobodys.text)
        # The same problem but for `instance`, which echoes the path B asked for.
        same = {**theirs.json(), "instance": None} == {**nobodys.json(), "instance": None}
        assert same, (method, template, theirs.text, nobodys.text)
        echoed = theirs.text.replace(stack.a.task["id"], "")
        assert not _leaks(stack.a, echoed), (method, template)
    assert await _owner_view(stack) == before


async def test_caller_scoped_reads_never_show_b_anything_of_a(stack: Stack) -> None:
    reads = sorted(op for op in operations(stack.spec) & CALLER_READS)
    assert reads
    for method, path in reads:
        queries = LIST_QUERIES if path == "/api/tasks" else ("",)
        for query in queries:
            target = path + query.format(secret=stack.a.secret)
            seen = await stack.gateway.request(method, target, headers=stack.b.headers)
            assert seen.status_code == 200, (target, seen.text)
            assert not _leaks(stack.a, seen.text), (target, seen.text)
    # Counts carry no identifier: B's must be B's alone.
    stats = (await stack.gateway.get("/api/tasks/stats", headers=stack.b.headers)).json()
    listed = (await stack.gateway.get("/api/tasks?limit=100", headers=stack.b.headers)).json()
    assert stats["total"] == len(listed["items"])
    assert stats["by_priority"].get("urgent", 0) == 0, stats  # A's task is the only urgent one


async def test_as_cursor_and_idempotency_key_give_b_nothing_of_as(stack: Stack) -> None:
    a, b, client = stack.a, stack.b, stack.gateway
    page = (await client.get("/api/tasks?limit=1", headers=a.headers)).json()
    assert page["next_cursor"], page  # A has a second page
    cursor = {"limit": "1", "cursor": page["next_cursor"]}
    seen = await client.get("/api/tasks", params=cursor, headers={**b.headers, **NO_CACHE})
    # The cursor only says where a page starts; the owner is still the token's.
    assert seen.status_code in (200, 400), seen.text
    assert not _leaks(a, seen.text), seen.text
    # A's Idempotency-Key and body replayed by B make B a task of B's own, never A's answer.
    replay = await client.post(
        "/api/tasks", json=a.body, headers={**b.headers, "Idempotency-Key": a.secret}
    )
    assert replay.status_code == 201, replay.text
    assert "idempotent-replayed" not in replay.headers
    assert replay.json()["id"] != a.task["id"]
    assert replay.json()["owner"] == b.id


async def test_caller_scoped_writes_by_b_leave_a_unchanged(stack: Stack) -> None:
    before = await _owner_view(stack)
    writes = sorted(op for op in operations(stack.spec) & CALLER_WRITES.keys())
    assert writes
    for method, path in writes:
        done = await stack.gateway.request(
            method, path, headers=stack.b.headers, **CALLER_WRITES[(method, path)]
        )
        assert done.status_code in (200, 201), (path, done.text)
        assert not _leaks(stack.a, done.text), path
    assert await _owner_view(stack) == before


async def test_b_right_after_as_cached_get_never_sees_as_answer(stack: Stack) -> None:
    a, b, client = stack.a, stack.b, stack.gateway
    for path in (f"/api/tasks/{a.task['id']}", "/api/tasks", "/api/tasks/stats"):
        await client.get(path, headers=a.headers)
        cached = await client.get(path, headers=a.headers)
        assert cached.headers["x-cache"] == "HIT", path  # A's answer is in the cache now
        own = await client.get(path, headers={**b.headers, **NO_CACHE})  # B's, past the cache
        assert own.text != cached.text, path  # else the comparison below could not tell
        for extra in ({}, {"If-None-Match": cached.headers["etag"]}):
            seen = await client.get(path, headers={**b.headers, **extra})
            # Not A's answer, and not a 304 confirming A's version either.
            assert (seen.status_code, seen.text) == (own.status_code, own.text), (path, extra)
