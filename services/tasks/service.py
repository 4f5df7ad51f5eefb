"""The tasks use cases: load, apply the domain rule, save with its event.

Calls run one way: api -> service -> storage. Each write holds the task's write lock (contention
only) and is conditional on the version it read (correctness); a lost race is read again.
"""

from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from common.clock import Clock, utcnow
from common.events import Envelope, TaskCreated, TaskDeleted
from common.outbox import OutboxEntry
from common.task_models import TaskCreate, TaskPatch
from services.tasks.domain import (
    BacklogFullError,
    BusyError,
    CursorPosition,
    ListQuery,
    PreconditionFailedError,
    Task,
    TaskStats,
    apply_patch,
    if_match_ok,
    new_task,
)
from services.tasks.events import wrap
from services.tasks.quota import TaskQuota
from services.tasks.storage import Stored, created_outbox, new_task_id

ATTEMPTS = 5


class Written(Protocol):
    """Tells the outbox relay which task has new events (and, for a new task, its outbox)."""

    def __call__(self, task_id: str, outbox: Sequence[OutboxEntry] | None = None) -> None:
        """Publish that task's events soon."""


class TaskStorage(Protocol):
    """What the service needs of the task store."""

    def locked(self, task_id: str) -> AbstractAsyncContextManager[None]:
        """Hold the task's write lock (BusyError if it stays taken)."""

    async def create(
        self, task: Task, event: Envelope, *, idem_key: str | None, fingerprint: str
    ) -> tuple[Task, bool]:
        """Insert the task with its event; (stored task, replayed)."""

    async def get(self, owner: str, task_id: str) -> Task:
        """The live task."""

    async def load(self, owner: str, task_id: str) -> Stored:
        """The live task as read for a write."""

    async def save(self, before: Stored, after: Task, event: Envelope) -> bool:
        """Store `after` with its event; False if the task changed since `before`."""

    async def bury(self, before: Stored, event: Envelope) -> bool:
        """Tombstone the task with its event; False if it changed since `before`."""

    async def page(
        self, owner: str, query: ListQuery, after: CursorPosition | None
    ) -> tuple[list[Task], CursorPosition | None]:
        """One page and the position after it."""

    async def stats(self, owner: str) -> TaskStats:
        """The owner's counts."""


class TaskService:
    """Task reads and writes for one verified owner at a time."""

    def __init__(
        self,
        store: TaskStorage,
        *,
        written: Written,
        backlog_full: Callable[[], bool] = lambda: False,
        quota: TaskQuota | None = None,
        clock: Clock = utcnow,
    ) -> None:
        self._store = store
        self._quota = quota  # the per-user cap on stored tasks (services/tasks/quota.py)
        self._written = written  # tells the outbox relay which task has new events
        self._backlog_full = backlog_full
        self._clock = clock

    def _admit_write(self) -> None:
        # Backpressure: a write would add events the relay cannot publish in time.
        if self._backlog_full():
            raise BacklogFullError("outbox backlog past its bound")

    async def create(self, owner: str, body: TaskCreate, idem_key: str | None) -> tuple[Task, bool]:
        """A new task; (the first result, True) for an Idempotency-Key retry."""
        self._admit_write()
        if self._quota is not None:
            await self._quota.admit(owner)
        task = new_task(new_task_id(), owner, body, self._clock())
        event = wrap(TaskCreated(task=task.snapshot()), owner)
        stored, replayed = await self._store.create(
            task, event, idem_key=idem_key, fingerprint=body.fingerprint()
        )
        # A new task's outbox is known: the relay publishes it without reading it back.
        self._written(stored.id, None if replayed else created_outbox(event))
        return stored, replayed

    async def get(self, owner: str, task_id: str) -> Task:
        """The owner's task (TaskNotFoundError otherwise)."""
        return await self._store.get(owner, task_id)

    async def page(
        self, owner: str, query: ListQuery, after: CursorPosition | None
    ) -> tuple[list[Task], CursorPosition | None]:
        """One page of the owner's tasks, and where the next one starts."""
        return await self._store.page(owner, query, after)

    async def stats(self, owner: str) -> TaskStats:
        """Counts of the owner's tasks."""
        return await self._store.stats(owner)

    async def update(
        self, owner: str, task_id: str, patch: TaskPatch, if_match: str | None
    ) -> Task:
        """Apply the patch; PreconditionFailedError when If-Match names another version."""
        self._admit_write()
        async with self._store.locked(task_id):
            for _ in range(ATTEMPTS):
                before = await self._store.load(owner, task_id)
                _check(if_match, before.task)
                after, payload = apply_patch(before.task, patch, self._clock())
                if payload is None:
                    return before.task  # nothing changed: no new version, no event
                if await self._store.save(before, after, wrap(payload, owner)):
                    self._written(task_id)
                    return after
        raise BusyError(f"{task_id}: kept losing to concurrent writes")

    async def delete(self, owner: str, task_id: str, if_match: str | None) -> None:
        """Delete the task; PreconditionFailedError when If-Match names another version."""
        self._admit_write()
        async with self._store.locked(task_id):
            for _ in range(ATTEMPTS):
                before = await self._store.load(owner, task_id)
                _check(if_match, before.task)
                event = wrap(TaskDeleted(task_id=task_id, owner=owner), owner)
                if await self._store.bury(before, event):
                    self._written(task_id)
                    return
        raise BusyError(f"{task_id}: kept losing to concurrent writes")


def _check(if_match: str | None, task: Task) -> None:
    if not if_match_ok(if_match, task.version):
        raise PreconditionFailedError(task.id)
