"""The tasks service as a real process over HTTP, against the real database and broker."""

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from pymongo import AsyncMongoClient

from common.events import TASKS_TOPIC
from tests.support.infra import MONGO_URL, free_port
from tests.support.processes import ServiceProcess
from tests.support.tasks import read_topic, tasks_process
from tests.support.tokens import SigningKey
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e

KEY = SigningKey.generate()
PREFIX = f"tapi{free_port()}"
PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def service() -> Iterator[ServiceProcess]:
    proc = tasks_process(PREFIX, KEY, TASKS_REMINDER_LEAD_S="3600").start()
    try:
        yield proc.wait_ready()
    finally:
        proc.stop()


@pytest.fixture
async def db() -> AsyncIterator[Any]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(MONGO_URL, tz_aware=True)
    try:
        yield client[f"{PREFIX}_tasks"]
    finally:
        await client.close()


def _client(service: ServiceProcess, user: str, **headers: str) -> httpx.AsyncClient:
    token, _ = KEY.mint(user)
    return httpx.AsyncClient(
        base_url=service.url, headers={"Authorization": f"Bearer {token}", **headers}, timeout=15
    )


def _user() -> str:
    return f"user-{uuid.uuid4().hex[:8]}"


async def test_crud_round_trip_honours_etags_and_preconditions(service: ServiceProcess) -> None:
    async with _client(service, _user()) as api:
        created = await api.post("/api/tasks", json={"title": "write tests", "tags": ["dev"]})
        assert created.status_code == 201
        task = created.json()
        assert created.headers["location"] == f"/api/tasks/{task['id']}"
        assert created.headers["etag"] == '"1"'
        assert (task["status"], task["priority"], task["version"]) == ("todo", "medium", 1)

        fetched = await api.get(f"/api/tasks/{task['id']}")
        assert fetched.json() == task
        assert fetched.headers["etag"] == '"1"'
        cached = await api.get(f"/api/tasks/{task['id']}", headers={"If-None-Match": '"1"'})
        assert cached.status_code == 304
        assert cached.content == b""

        patched = await api.patch(
            f"/api/tasks/{task['id']}", json={"priority": "urgent"}, headers={"If-Match": '"1"'}
        )
        assert patched.status_code == 200
        assert patched.headers["etag"] == '"2"'
        assert (patched.json()["priority"], patched.json()["version"]) == ("urgent", 2)
        assert (
            await api.get(f"/api/tasks/{task['id']}", headers={"If-None-Match": '"1"'})
        ).status_code == 200

        stale = await api.patch(
            f"/api/tasks/{task['id']}", json={"title": "lost update"}, headers={"If-Match": '"1"'}
        )
        assert stale.status_code == 412
        assert stale.headers["content-type"] == PROBLEM
        stale_delete = await api.delete(f"/api/tasks/{task['id']}", headers={"If-Match": '"1"'})
        assert stale_delete.status_code == 412
        assert (await api.get(f"/api/tasks/{task['id']}")).json()["title"] == "write tests"

        deleted = await api.delete(f"/api/tasks/{task['id']}", headers={"If-Match": '"2"'})
        assert deleted.status_code == 204
        assert (await api.get(f"/api/tasks/{task['id']}")).status_code == 404
        assert (await api.delete(f"/api/tasks/{task['id']}")).status_code == 404


async def test_another_users_task_is_404_on_every_verb(service: ServiceProcess) -> None:
    async with _client(service, _user()) as alice, _client(service, _user()) as mallory:
        task = (await alice.post("/api/tasks", json={"title": "private"})).json()
        url = f"/api/tasks/{task['id']}"
        missing = f"/api/tasks/{'0' * 24}"
        for method, body in (("GET", None), ("PATCH", {"title": "pwned"}), ("DELETE", None)):
            theirs = await mallory.request(method, url, json=body)
            nobodys = await mallory.request(method, missing, json=body)
            assert theirs.status_code == nobodys.status_code == 404, method
            assert theirs.json()["detail"] == nobodys.json()["detail"]
        assert (await mallory.get("/api/tasks")).json() == {"items": [], "next_cursor": None}
        assert (await mallory.get("/api/tasks/stats")).json()["total"] == 0
        owner_view = (await alice.get(url)).json()
        assert (owner_view["title"], owner_view["version"]) == ("private", 1)
        # The owner comes from the token: a body naming another owner is refused, not obeyed.
        spoof = await mallory.post("/api/tasks", json={"title": "x", "owner": owner_view["owner"]})
        assert spoof.status_code == 422


async def test_any_bad_token_gets_the_same_401(service: ServiceProcess) -> None:
    other_key = SigningKey.generate("test-key")  # same kid, different key
    expired, _ = KEY.mint("u", now=datetime.now(UTC).timestamp() - 3600, ttl_s=60)
    forged, _ = other_key.mint("u")
    answers = []
    async with httpx.AsyncClient(base_url=service.url) as raw:
        for auth in (
            None,
            "Bearer",
            "Bearer garbage",
            f"Basic {expired}",
            f"Bearer {expired}",
            f"Bearer {forged}",
        ):
            headers = {"Authorization": auth} if auth else {}
            response = await raw.get("/api/tasks", headers=headers)
            assert response.status_code == 401
            assert response.headers["content-type"] == PROBLEM
            assert response.headers["www-authenticate"] == "Bearer"
            answers.append(response.json())
    assert all(a == answers[0] for a in answers)


async def test_bad_input_is_refused_and_nothing_is_written(service: ServiceProcess) -> None:
    async with _client(service, _user()) as api:
        task = (await api.post("/api/tasks", json={"title": "keep"})).json()
        url = f"/api/tasks/{task['id']}"
        json_type = {"Content-Type": "application/json"}
        refusals = [
            (await api.post("/api/tasks", json={"title": "x", "id": "a" * 24}), 422),
            (await api.post("/api/tasks", json={"title": "x", "version": 9}), 422),
            (await api.post("/api/tasks", json={"title": ""}), 422),
            (
                await api.post(
                    "/api/tasks", content=b"{", headers={"Content-Type": "application/json"}
                ),
                422,
            ),
            (await api.post("/api/tasks", json={"title": "x", "description": "d" * 70_000}), 413),
            (await api.post("/api/tasks", content=_chunked(70_000), headers=json_type), 413),
            (await api.patch(url, json={"owner": "someone"}), 422),
            (await api.patch(url, json={"title": None}), 422),
            (await api.patch(url, json={"status": "archived"}), 422),
            (await api.get("/api/tasks/not-an-id"), 404),
            (await api.patch("/api/tasks/ZZZ", json={"title": "x"}), 404),
            (await api.delete("/api/tasks/" + "g" * 24), 404),
            (await api.get("/api/tasks", params={"limit": 101}), 422),
            (await api.get("/api/tasks", params={"limit": 0}), 422),
            (await api.get("/api/tasks", params={"owner": "x"}), 422),
            (await api.get("/api/tasks", params={"sort": "owner"}), 422),
            (await api.get("/api/tasks", params={"cursor": "bm9wZQ.AAAA"}), 400),
            (await api.get("/api/tasks", params={"cursor": "%%%"}), 400),
            (
                await api.post(
                    "/api/tasks", json={"title": "x"}, headers={"Idempotency-Key": "x" * 201}
                ),
                400,
            ),
        ]
        for response, status in refusals:
            assert response.status_code == status, response.text
            assert response.headers["content-type"] == PROBLEM
        assert (await api.get("/api/tasks/stats")).json()["total"] == 1
        assert (await api.get(url)).json() == task
        small = await api.post("/api/tasks", content=_chunked(5_000), headers=json_type)
        assert small.status_code == 201  # chunked bodies within the cap are fine


async def test_idempotency_key_makes_a_retried_create_return_the_first_result(
    service: ServiceProcess,
) -> None:
    async with _client(service, _user()) as api:
        body = {"title": "pay rent", "priority": "high"}
        key = {"Idempotency-Key": uuid.uuid4().hex}
        first, *retries = await asyncio.gather(
            *(api.post("/api/tasks", json=body, headers=key) for _ in range(4))
        )
        assert {r.status_code for r in (first, *retries)} == {201}
        assert {r.json()["id"] for r in (first, *retries)} == {first.json()["id"]}
        replayed = [r for r in (first, *retries) if r.headers.get("idempotent-replayed")]
        assert len(replayed) == 3
        reused = await api.post("/api/tasks", json={"title": "other"}, headers=key)
        assert reused.status_code == 422
        assert (await api.get("/api/tasks/stats")).json()["total"] == 1
    async with _client(service, _user()) as someone_else:  # keys are per owner
        assert (await someone_else.post("/api/tasks", json=body, headers=key)).status_code == 201


async def test_filters_sorts_and_search(service: ServiceProcess) -> None:
    now = datetime.now(UTC)
    specs: list[dict[str, Any]] = [
        {
            "title": "alpha report",
            "priority": "low",
            "tags": ["work"],
            "due_at": now + timedelta(days=3),
        },
        {
            "title": "beta.release",
            "priority": "urgent",
            "status": "in_progress",
            "due_at": now + timedelta(days=1),
        },
        {"title": "betaXrelease", "priority": "high", "tags": ["work", "home"]},
        {
            "title": "gamma",
            "priority": "medium",
            "status": "done",
            "due_at": now + timedelta(days=10),
        },
    ]
    async with _client(service, _user()) as api:
        ids = {}
        for spec in specs:
            body = {**spec, "due_at": spec["due_at"].isoformat()} if "due_at" in spec else spec
            ids[spec["title"]] = (await api.post("/api/tasks", json=body)).json()["id"]

        async def titles(**params: Any) -> list[str]:
            response = await api.get("/api/tasks", params=params)
            assert response.status_code == 200, response.text
            return [t["title"] for t in response.json()["items"]]

        assert await titles(status="in_progress") == ["beta.release"]
        assert await titles(priority="high") == ["betaXrelease"]
        assert sorted(await titles(tag="work")) == ["alpha report", "betaXrelease"]
        assert await titles(q="BETA.rel") == ["beta.release"]  # literal dot, case-insensitive
        assert await titles(q="(") == []
        due = (now + timedelta(days=2)).isoformat()
        assert await titles(due_before=due) == ["beta.release"]
        assert sorted(await titles(due_after=due)) == ["alpha report", "gamma"]
        assert await titles(sort="-priority") == [
            "beta.release",
            "betaXrelease",
            "gamma",
            "alpha report",
        ]
        assert await titles(sort="due_at") == [
            "beta.release",
            "alpha report",
            "gamma",
            "betaXrelease",
        ]
        assert await titles(sort="-created_at") == [s["title"] for s in reversed(specs)]
        assert await titles(sort="created_at", status="done", tag="nope") == []
        stats = (await api.get("/api/tasks/stats")).json()
        assert stats == {
            "total": 4,
            "by_status": {"todo": 2, "in_progress": 1, "done": 1},
            "by_priority": {"low": 1, "medium": 1, "high": 1, "urgent": 1},
        }


@pytest.mark.parametrize("sort", ["-created_at", "priority", "due_at"])
async def test_pages_stay_consistent_while_tasks_are_inserted(
    service: ServiceProcess, sort: str
) -> None:
    async with _client(service, _user()) as api:
        original = set()
        for i in range(17):
            body: dict[str, Any] = {"title": f"t{i}", "priority": ["low", "high"][i % 2]}
            if i % 3:
                body["due_at"] = (datetime.now(UTC) + timedelta(hours=i % 5)).isoformat()
            original.add((await api.post("/api/tasks", json=body)).json()["id"])
        seen: list[str] = []
        cursor = None
        for page_no in range(20):
            params: dict[str, Any] = {"limit": 5, "sort": sort}
            if cursor:
                params["cursor"] = cursor
            page = (await api.get("/api/tasks", params=params)).json()
            seen.extend(t["id"] for t in page["items"])
            # Writers keep going between pages: new tasks, including ties on every sort key.
            await api.post("/api/tasks", json={"title": f"new {page_no}", "priority": "high"})
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert len(seen) == len(set(seen)), "a task appeared on two pages"
        assert original <= set(seen), "a task that existed throughout was skipped"


async def test_lifecycle_events_arrive_in_order_once_each_with_the_trace(
    service: ServiceProcess, db: Any
) -> None:
    trace_id = uuid.uuid4().hex
    traceparent = f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"
    async with _client(service, _user(), traceparent=traceparent) as api:
        task = (await api.post("/api/tasks", json={"title": "ship it"})).json()
        url = f"/api/tasks/{task['id']}"
        await api.patch(url, json={"title": "ship it now"})
        await api.patch(url, json={"status": "done"})
        assert (await api.delete(url)).status_code == 204

    # The relay removes the tombstone only after task.deleted.v1 is acknowledged by Kafka.
    await eventually(lambda: _gone(db, task["id"]))
    events = [e for e in await read_topic(f"{PREFIX}.{TASKS_TOPIC}") if _task_id(e) == task["id"]]
    assert [e.type for e in events] == [
        "task.created.v1",
        "task.updated.v1",
        "task.completed.v1",
        "task.deleted.v1",
    ]
    assert len({e.id for e in events}) == 4
    assert all(e.subject == task["owner"] for e in events)
    assert [e.data.get("task", {}).get("version") for e in events[:3]] == [1, 2, 3]
    assert events[1].data["changed"] == ["title"]
    assert all(e.traceparent and e.traceparent.split("-")[1] == trace_id for e in events)


async def test_a_task_coming_due_gets_one_reminder(service: ServiceProcess, db: Any) -> None:
    async with _client(service, _user()) as api:
        due = (datetime.now(UTC) + timedelta(minutes=20)).isoformat()
        task = (await api.post("/api/tasks", json={"title": "dentist", "due_at": due})).json()

    async def reminded() -> bool:
        doc = await db["tasks"].find_one({"_id": task["id"]})
        return bool(doc and not doc["remind"] and not doc["outbox"])

    await eventually(reminded)
    events = [e for e in await read_topic(f"{PREFIX}.{TASKS_TOPIC}") if _task_id(e) == task["id"]]
    assert [e.type for e in events] == ["task.created.v1", "task.due_soon.v1"]
    assert events[1].data["task"]["due_at"] is not None


async def _chunked(size: int) -> AsyncIterator[bytes]:
    """A JSON body sent without Content-Length (chunked transfer encoding)."""
    yield b'{"title": "x", "description": "'
    for _ in range(size // 1000):
        yield b"d" * 1000
    yield b'"}'


async def _gone(db: Any, task_id: str) -> bool:
    return await db["tasks"].find_one({"_id": task_id}) is None


def _task_id(event: Any) -> str | None:
    data: dict[str, Any] = event.data
    found: str | None = data.get("task_id") or data.get("task", {}).get("id")
    return found
