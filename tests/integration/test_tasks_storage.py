"""Tasks storage on the real database and broker: indexes, locked writes, reminders, relay."""

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from functools import partial
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from common.events import TASKS_TOPIC, Envelope, Payload, TaskUpdated
from common.infra import open_broker
from services.tasks.domain import (
    ListQuery,
    Task,
    TaskCreate,
    TaskPatch,
    apply_patch,
    new_task,
    now_ms,
)
from services.tasks.events import OutboxRelay, ReminderScan, wrap
from services.tasks.queries import SORT_INDEX, list_filter, list_sort
from services.tasks.settings import TasksSettings
from services.tasks.storage import TaskStore, new_task_id
from tests.support.infra import KAFKA_BOOTSTRAP, MONGO_URL
from tests.support.kafka import collect_events

pytestmark = pytest.mark.integration

Client = AsyncMongoClient[dict[str, Any]]


@pytest.fixture
def settings(prefix: str) -> TasksSettings:
    return TasksSettings(
        kafka_bootstrap=KAFKA_BOOTSTRAP,
        topic_prefix=f"{prefix}.",
        kafka_partitions=2,
        mongo_url=MONGO_URL,
        mongo_db=f"{prefix}_tasks",
        reminder_lead_s=3600,
    )


@pytest.fixture
async def store(settings: TasksSettings) -> AsyncIterator[TaskStore]:
    client: Client = AsyncMongoClient(settings.mongo_url, tz_aware=True)
    store = TaskStore(client[settings.mongo_db], locks=True, lock_wait_s=10, outbox_max=500)
    await store.ensure_indexes()
    try:
        yield store
    finally:
        await client.drop_database(settings.mongo_db)
        await client.close()


async def _create(store: TaskStore, owner: str = "u1", **fields: Any) -> Task:
    from common.events import TaskCreated  # noqa: PLC0415

    body = TaskCreate.model_validate({"title": "t", **fields})
    task = new_task(new_task_id(), owner, body, now_ms())
    stored, _ = await store.create(
        task, wrap(TaskCreated(task=task.snapshot()), owner), idem_key=None, fingerprint="f"
    )
    return stored


def _wrap_for(owner: str, payload: Payload) -> Envelope:
    return wrap(payload, owner)


def _retitle(title: str) -> Any:
    def change(task: Task) -> tuple[Task, Payload | None]:
        return apply_patch(task, TaskPatch(title=title), now_ms())

    return change


async def test_indexes_exist_with_the_declared_keys_and_creation_is_idempotent(
    store: TaskStore,
) -> None:
    await store.ensure_indexes()  # a second replica starting: no error, nothing changes
    found = {
        ix["name"]: (list(ix["key"].items()), ix.get("unique", False))
        async for ix in await store.tasks.list_indexes()
    }
    assert found == {
        "_id_": ([("_id", 1)], False),
        "owner_status": ([("owner", 1), ("status", 1)], False),
        "owner_priority": ([("owner", 1), ("priority", 1), ("_id", 1)], False),
        "owner_created_at": ([("owner", 1), ("created_at", -1), ("_id", -1)], False),
        "owner_due_at": ([("owner", 1), ("due_at", 1), ("_id", 1)], False),
        "owner_idem": ([("owner", 1), ("idem", 1)], True),
        "outbox_pending": ([("pending", 1)], False),
        "reminders": ([("remind", 1), ("due_at", 1)], False),
    }


@pytest.mark.parametrize("sort", ["-created_at", "created_at", "due_at", "-due_at", "priority"])
async def test_every_list_query_is_served_by_an_owner_prefixed_index(
    store: TaskStore, sort: str
) -> None:
    """MongoDB: the winning plan is an IXSCAN of the hinted index with no blocking SORT.

    FerretDB 1.24 (SQLite) pushes down only `_id` equality and scans for anything else: there
    the provable facts are that the hinted index exists and matches the query's shape (owner
    equality, then the sort keys in order), and what the backend's explain reports.
    """
    await _create(store, tags=["x"])
    query = ListQuery.model_validate({"sort": sort, "status": "todo", "tag": "x", "q": "t"})
    hint = SORT_INDEX[query.sort_field]
    command = {
        "find": "tasks",
        "filter": list_filter("u1", query, None),
        "sort": dict(list_sort(query)),
        "hint": hint,
        "limit": query.limit + 1,
    }
    explained = await store.tasks.database.command("explain", command)
    indexes = {ix["name"]: list(ix["key"].items()) async for ix in await store.tasks.list_indexes()}
    keys = indexes[hint]
    sort_keys = list_sort(query)
    same = [(f, d) for f, d in keys[1:]] == sort_keys
    reversed_ = [(f, -d) for f, d in keys[1:]] == sort_keys
    assert keys[0] == ("owner", 1)
    assert same or reversed_, f"{hint} {keys} cannot serve sort {sort_keys}"
    if "ferretdbVersion" in explained.get("serverInfo", {}):
        assert explained["filterPushdown"] is False
        assert any("SCAN" in line for line in explained["queryPlanner"]["Plan"])
    else:
        plan = str(explained["queryPlanner"]["winningPlan"])
        assert "IXSCAN" in plan
        assert f"'indexName': '{hint}'" in plan
        assert "COLLSCAN" not in plan
        assert "'stage': 'SORT'" not in plan


async def test_lookups_by_id_are_pushed_down_to_the_backend(store: TaskStore) -> None:
    """Reads filter on `_id` alone: FerretDB then evaluates the filter in SQLite, not in Go.

    (Its SQLite plan still reports a SCAN: FerretDB 1.24 filters on an expression the primary
    key index does not cover. MongoDB answers from the _id index.)
    """
    task = await _create(store)
    explained = await store.tasks.database.command(
        "explain", {"find": "tasks", "filter": {"_id": task.id}}
    )
    if "ferretdbVersion" in explained.get("serverInfo", {}):
        assert explained["filterPushdown"] is True
    else:
        assert "IDHACK" in str(explained) or "EXPRESS" in str(explained)


async def test_concurrent_writes_to_one_task_from_many_replicas_are_all_kept(
    store: TaskStore, settings: TasksSettings
) -> None:
    """FerretDB applies updates read-then-write; the lock documents serialise them.

    Each "replica" has its own client and lock registry, as separate processes would.
    """
    task = await _create(store)
    clients: list[Client] = [AsyncMongoClient(settings.mongo_url, tz_aware=True) for _ in range(4)]
    replicas = [
        TaskStore(c[settings.mongo_db], locks=True, lock_wait_s=30, outbox_max=500) for c in clients
    ]
    try:
        results = await asyncio.gather(
            *(
                replicas[i % 4].mutate(
                    "u1", task.id, _retitle(f"title {i}"), partial(_wrap_for, "u1")
                )
                for i in range(12)
            )
        )
    finally:
        for client in clients:
            await client.close()
    assert sorted(r.version for r in results) == list(range(2, 14))
    doc = await store.tasks.find_one({"_id": task.id})
    assert doc is not None
    assert doc["version"] == 13
    events = [Envelope.model_validate(e["event"]) for e in doc["outbox"]]
    assert [e.type for e in events] == ["task.created.v1"] + ["task.updated.v1"] * 12
    versions = [e.payload().model_dump()["task"]["version"] for e in events]
    assert versions == list(range(1, 14))  # outbox order is write order


async def test_a_reminder_is_emitted_once_even_with_competing_scanners(
    store: TaskStore, settings: TasksSettings
) -> None:
    soon = (now_ms() + timedelta(minutes=30)).isoformat()
    later = (now_ms() + timedelta(days=3)).isoformat()
    due = await _create(store, due_at=soon)
    await _create(store, due_at=later)
    await _create(store, due_at=soon, status="done")
    await _create(store)

    class _NoRelay:
        def wake(self) -> None:
            """Nothing to wake in this test."""

    scans = [ReminderScan(store, settings, _NoRelay()) for _ in range(3)]  # type: ignore[arg-type]
    sent = await asyncio.gather(*(scan.scan() for scan in scans))
    sent_again = await scans[0].scan()

    assert sum(sent) == 1
    assert sent_again == 0
    docs = await store.tasks.find({"outbox.event.type": {"$exists": True}}).to_list()
    due_soon = [
        (doc["_id"], e["event"]["type"])
        for doc in docs
        for e in doc["outbox"]
        if e["event"]["type"] == "task.due_soon.v1"
    ]
    assert due_soon == [(due.id, "task.due_soon.v1")]


async def test_competing_relays_publish_each_entry_once_in_order(
    store: TaskStore, settings: TasksSettings
) -> None:
    tasks = [await _create(store, owner=f"user{i % 2}") for i in range(6)]
    for task in tasks:
        for n in range(2):
            await store.mutate(
                task.owner, task.id, _retitle(f"v{n}"), partial(_wrap_for, task.owner)
            )
    async with open_broker(settings, [TASKS_TOPIC]) as broker:
        relays = [OutboxRelay(store, broker, settings) for _ in range(3)]
        while await store.pending_ids(100):
            await asyncio.gather(*(relay.drain() for relay in relays))

    events = await collect_events(settings.topic(TASKS_TOPIC), lambda evs: len(evs) >= 18)
    ids = [e.id for e in events]
    assert len(ids) == len(set(ids)) == 18
    for task in tasks:
        mine = [e for e in events if e.payload().model_dump()["task"]["id"] == task.id]
        assert [e.type for e in mine] == ["task.created.v1", "task.updated.v1", "task.updated.v1"]
        assert all(e.subject == task.owner for e in mine)
        assert [e.payload().model_dump()["task"]["version"] for e in mine] == [1, 2, 3]
        assert isinstance(mine[-1].payload(), TaskUpdated)
    leftovers = await store.tasks.find(
        {"$or": [{"pending": True}, {"outbox": {"$size": 1}}]}
    ).to_list()
    assert leftovers == []
