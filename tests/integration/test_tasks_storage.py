"""Tasks storage on the real database and broker: indexes, locked writes, reminders, relay."""

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from common.clock import utcnow
from common.events import TASKS_TOPIC, Envelope, TaskUpdated
from common.infra import open_broker
from common.outbox import PENDING
from common.task_models import TaskCreate, TaskPatch
from services.tasks.domain import ListQuery, PreconditionFailedError, Task
from services.tasks.events import outbox_relay
from services.tasks.locks import DocLocks
from services.tasks.queries import SORT_INDEX, list_filter, list_sort
from services.tasks.reminders import ReminderScan, ReminderStore
from services.tasks.service import TaskService
from services.tasks.settings import TasksSettings
from services.tasks.storage import Stored, TaskStore
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


def _service(store: TaskStore) -> TaskService:
    return TaskService(store, written=lambda _, outbox=None: None)


async def _create(store: TaskStore, owner: str = "u1", **fields: Any) -> Task:
    body = TaskCreate.model_validate({"title": "t", **fields})
    stored, _ = await _service(store).create(owner, body, None)
    return stored


async def _retitle(store: TaskStore, task: Task, title: str) -> Task:
    return await _service(store).update(task.owner, task.id, TaskPatch(title=title), None)


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
        "outbox_pending": ([("outbox_pending", 1)], False),
        "reminders": ([("remind", 1), ("due_at", 1)], False),
    }


async def test_the_outbox_index_of_the_former_pending_mark_is_replaced(store: TaskStore) -> None:
    await store.tasks.drop_index("outbox_pending")
    await store.tasks.create_index([("pending", 1)], name="outbox_pending")  # as it was
    await store.ensure_indexes()
    found = {ix["name"]: list(ix["key"].items()) async for ix in await store.tasks.list_indexes()}
    assert found["outbox_pending"] == [(PENDING, 1)]


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
            *(_retitle(replicas[i % 4], task, f"title {i}") for i in range(12))
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
    soon = (utcnow() + timedelta(minutes=30)).isoformat()
    later = (utcnow() + timedelta(days=3)).isoformat()
    due = await _create(store, due_at=soon)
    await _create(store, due_at=later)
    await _create(store, due_at=soon, status="done")
    await _create(store)

    class _NoRelay:
        def wake(self) -> None:
            """Nothing to wake in this test."""

    reminders = ReminderStore(store.tasks, store.locks, wait_s=10)
    scans = [ReminderScan(reminders, settings, _NoRelay()) for _ in range(3)]
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
            await _retitle(store, task, f"v{n}")
    async with open_broker(settings, [TASKS_TOPIC]) as broker:
        relays = [outbox_relay(store.tasks, store.locks, broker, settings) for _ in range(3)]
        while await store.tasks.count_documents({PENDING: True}):
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
        {"$or": [{PENDING: True}, {"outbox": {"$size": 1}}]}
    ).to_list()
    assert leftovers == []


class _StallingStore(TaskStore):
    """A replica whose first write stalls, lock held, until `resume` is set."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stalled, self.resume = asyncio.Event(), asyncio.Event()

    async def save(self, before: Stored, after: Task, event: Envelope, **kw: Any) -> bool:
        if not self.resume.is_set():
            self.stalled.set()
            await self.resume.wait()
        return await super().save(before, after, event, **kw)


async def _overtaken(
    store: TaskStore, settings: TasksSettings, patch: TaskPatch, if_match: str | None
) -> tuple[Task, "asyncio.Task[Task]", Client, Client]:
    """Replica A reads a task and stalls past its lock's TTL; replica B then takes the lock
    over and changes the priority. Returns B's result and A's pending update."""
    task = await _create(store)
    clients: list[Client] = [AsyncMongoClient(settings.mongo_url, tz_aware=True) for _ in range(2)]
    slow = _StallingStore(clients[0][settings.mongo_db], locks=True, lock_wait_s=10, outbox_max=500)
    # B's clock is past A's 10 s lock TTL: for B, A's lock has expired.
    late = TaskStore(
        clients[1][settings.mongo_db],
        locks=True,
        lock_wait_s=10,
        outbox_max=500,
        clock=lambda: utcnow() + timedelta(seconds=11),
    )
    first = asyncio.create_task(_service(slow).update("u1", task.id, patch, if_match))
    await slow.stalled.wait()
    second = await _service(late).update("u1", task.id, TaskPatch(priority="high"), None)
    slow.resume.set()
    return second, first, clients[0], clients[1]


async def test_a_holder_stalled_past_the_lock_ttl_cannot_overwrite_a_newer_update(
    store: TaskStore, settings: TasksSettings
) -> None:
    second, first, *clients = await _overtaken(store, settings, TaskPatch(title="from A"), None)
    try:
        stalled = await first
    finally:
        for client in clients:
            await client.close()
    assert second.version == 2
    # A's write found version 2, not the 1 it read: it matched nothing and A read again.
    assert (stalled.version, stalled.title, stalled.priority) == (3, "from A", "high")
    doc = await store.tasks.find_one({"_id": stalled.id})
    assert doc is not None
    assert (doc["version"], doc["title"], doc["priority"]) == (3, "from A", 2)
    events = [Envelope.model_validate(e["event"]) for e in doc["outbox"]]
    assert [e.payload().model_dump()["task"]["version"] for e in events] == [1, 2, 3]
    assert [e.data.get("changed") for e in events[1:]] == [["priority"], ["title"]]
    # The lock B took over was deleted first, and both holders released theirs.
    assert await store.locks.collection.count_documents({}) == 0


async def test_a_stalled_conditional_update_is_refused_once_overtaken(
    store: TaskStore, settings: TasksSettings
) -> None:
    second, first, *clients = await _overtaken(store, settings, TaskPatch(title="A"), '"1"')
    try:
        with pytest.raises(PreconditionFailedError):
            await first
    finally:
        for client in clients:
            await client.close()
    doc = await store.tasks.find_one({"_id": second.id})
    assert doc is not None
    assert (doc["version"], doc["title"], doc["priority"]) == (2, "t", 2)
    assert len(doc["outbox"]) == 2


async def test_expired_locks_nobody_takes_over_are_swept(store: TaskStore) -> None:
    # A holder that dies while holding: entered, never exited (kept referenced, or the
    # garbage collector would close it and release the lock).
    crashed = DocLocks(store.locks.collection).hold("w:crashed")
    assert await crashed.__aenter__() is True
    async with store.locks.hold("w:live", ttl_s=60) as held:
        assert held
        # Eleven seconds on: past the crashed holder's 10 s TTL, within the live one's 60 s.
        later = DocLocks(store.locks.collection, clock=lambda: utcnow() + timedelta(seconds=11))
        assert await later.sweep() == 1
        left = [doc["_id"] async for doc in store.locks.collection.find({})]
        assert left == ["w:live"]
        assert await later.sweep() == 0
    del crashed
