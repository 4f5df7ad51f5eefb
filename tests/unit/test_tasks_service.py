"""Tasks use cases over an in-memory store: rule, version-checked save, retry on a lost race."""

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import pytest

from common.events import Envelope
from common.outbox import OutboxEntry
from common.task_models import TaskCreate, TaskPatch
from services.tasks.domain import (
    BacklogFullError,
    BusyError,
    CursorPosition,
    ListQuery,
    PreconditionFailedError,
    Task,
    TaskNotFoundError,
    TaskStats,
    new_task,
)
from services.tasks.events import task_entry
from services.tasks.service import ATTEMPTS, TaskService
from services.tasks.storage import Stored

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


class FakeStore:
    """One task in memory; `races` writes of another replica land just before our saves."""

    def __init__(self, task: Task, races: int = 0) -> None:
        self.task: Task | None = task
        self.events: list[Envelope] = []
        self.races = races
        self.locks_taken = 0

    @asynccontextmanager
    async def locked(self, task_id: str) -> AsyncIterator[None]:
        self.locks_taken += 1
        yield

    async def create(
        self, task: Task, event: Envelope, *, idem_key: str | None, fingerprint: str
    ) -> tuple[Task, bool]:
        self.task = task
        self.events.append(event)
        return task, False

    async def get(self, owner: str, task_id: str) -> Task:
        return (await self.load(owner, task_id)).task

    async def load(self, owner: str, task_id: str) -> Stored:
        if self.task is None or self.task.owner != owner or self.task.id != task_id:
            raise TaskNotFoundError(task_id)
        return Stored(self.task, None, len(self.events))

    def _won(self, before: Stored) -> bool:
        assert self.task is not None
        if self.races:
            self.races -= 1
            self.task = self.task.model_copy(update={"version": self.task.version + 1})
        return before.task.version == self.task.version

    async def save(self, before: Stored, after: Task, event: Envelope) -> bool:
        if not self._won(before):
            return False
        self.task = after
        self.events.append(event)
        return True

    async def bury(self, before: Stored, event: Envelope) -> bool:
        if not self._won(before):
            return False
        self.task = None
        self.events.append(event)
        return True

    async def page(
        self, owner: str, query: ListQuery, after: CursorPosition | None
    ) -> tuple[list[Task], CursorPosition | None]:
        return ([self.task] if self.task else []), None

    async def stats(self, owner: str) -> TaskStats:
        raise NotImplementedError


class Relay:
    """What the relay was told: the tasks named, and the outboxes handed over with them."""

    def __init__(self) -> None:
        self.named: list[str] = []
        self.outboxes: list[list[OutboxEntry] | None] = []

    def __call__(self, task_id: str, outbox: Sequence[OutboxEntry] | None = None) -> None:
        self.named.append(task_id)
        self.outboxes.append(None if outbox is None else list(outbox))


def _service(races: int = 0) -> tuple[TaskService, FakeStore, list[str]]:
    task = new_task("a" * 24, "u1", TaskCreate(title="t"), NOW)
    store = FakeStore(task, races)
    relay = Relay()
    return TaskService(store, written=relay, clock=lambda: NOW), store, relay.named


async def test_a_create_hands_its_outbox_to_the_relay() -> None:
    store, relay = FakeStore(new_task("a" * 24, "u1", TaskCreate(title="t"), NOW)), Relay()
    service = TaskService(store, written=relay, clock=lambda: NOW)
    created, replayed = await service.create("u1", TaskCreate(title="new"), None)
    assert not replayed
    assert relay.named == [created.id]
    assert relay.outboxes == [[task_entry(store.events[-1])]]


async def test_a_patch_is_saved_with_its_event_and_wakes_the_relay() -> None:
    service, store, wakes = _service()
    after = await service.update("u1", "a" * 24, TaskPatch(title="new"), '"1"')
    assert (after.title, after.version) == ("new", 2)
    assert store.task == after
    assert [e.type for e in store.events] == ["task.updated.v1"]
    assert (wakes, store.locks_taken) == (["a" * 24], 1)


async def test_a_patch_that_changes_nothing_writes_nothing() -> None:
    service, store, wakes = _service()
    same = await service.update("u1", "a" * 24, TaskPatch(title="t"), None)
    assert same.version == 1
    assert (store.events, wakes) == ([], [])


async def test_a_lost_race_is_read_again_and_the_patch_applied_on_top() -> None:
    service, store, _ = _service(races=2)
    after = await service.update("u1", "a" * 24, TaskPatch(title="new"), None)
    assert (after.title, after.version) == ("new", 4)
    assert len(store.events) == 1


async def test_a_lost_race_with_if_match_is_a_failed_precondition() -> None:
    service, store, wakes = _service(races=1)
    with pytest.raises(PreconditionFailedError):
        await service.delete("u1", "a" * 24, '"1"')
    assert store.task is not None
    assert (store.events, wakes) == ([], [])


async def test_losing_every_attempt_is_busy() -> None:
    service, store, _ = _service(races=ATTEMPTS)
    with pytest.raises(BusyError):
        await service.update("u1", "a" * 24, TaskPatch(title="new"), None)
    assert store.events == []


async def test_delete_buries_the_task_with_its_event() -> None:
    service, store, wakes = _service()
    await service.delete("u1", "a" * 24, None)
    assert store.task is None
    assert [e.type for e in store.events] == ["task.deleted.v1"]
    assert wakes == ["a" * 24]
    with pytest.raises(TaskNotFoundError):
        await service.get("u1", "a" * 24)


async def test_writes_are_refused_while_the_backlog_is_full_and_reads_keep_working() -> None:
    task = new_task("a" * 24, "u1", TaskCreate(title="t"), NOW)
    store, full = FakeStore(task, 0), [True]
    service = TaskService(store, written=Relay(), backlog_full=lambda: full[0])
    with pytest.raises(BacklogFullError):
        await service.update("u1", "a" * 24, TaskPatch(title="new"), None)
    with pytest.raises(BacklogFullError):
        await service.delete("u1", "a" * 24, None)
    assert (await service.get("u1", "a" * 24)).title == "t"
    assert store.events == []  # accounting: 2 refused, 0 written, 0 lost
    full[0] = False
    assert (await service.update("u1", "a" * 24, TaskPatch(title="new"), None)).title == "new"
