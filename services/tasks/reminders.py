"""Due-date reminders: which tasks are owed one, claiming it once, and the periodic scan."""

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

import structlog
from prometheus_client import Counter
from pymongo.asynchronous.collection import AsyncCollection

from common.clock import utcnow
from common.events import Envelope, TaskDueSoon, new_event
from common.outbox import push
from services.tasks.domain import Task, reminder_deadline
from services.tasks.events import SOURCE, task_entry
from services.tasks.locks import DocLocks, write_key
from services.tasks.settings import TasksSettings
from services.tasks.storage import from_doc

log = structlog.get_logger(__name__)
Doc = dict[str, Any]
REMINDERS = Counter("taskbus_tasks_reminders_total", "task.due_soon.v1 events emitted.")


class ReminderStore:
    """The reminder fields of the tasks collection (`remind`, `reminded_for`)."""

    def __init__(self, tasks: AsyncCollection[Doc], locks: DocLocks, *, wait_s: float) -> None:
        self._tasks = tasks
        self._locks = locks  # the tasks' write locks: a claim writes the task document
        self._wait = wait_s

    async def candidates(self, until: datetime, limit: int) -> list[str]:
        """Tasks owed a reminder whose due date is at or before `until`."""
        found = (
            self._tasks.find({"remind": True, "due_at": {"$lte": until}}, {"_id": 1})
            .hint("reminders")
            .limit(limit)
        )
        return [doc["_id"] async for doc in found]

    async def claim(self, task_id: str, until: datetime, make: Callable[[Task], Envelope]) -> bool:
        """Record the reminder and its event once; False if already sent or no longer due."""
        async with self._locks.hold(write_key(task_id), wait_s=self._wait) as held:
            if not held:
                return False
            doc = await self._tasks.find_one({"_id": task_id})
            if doc is None or not doc["remind"] or doc["deleted"] or doc["due_at"] > until:
                return False
            where = {"_id": task_id, "remind": True, "due_at": doc["due_at"]}
            update = {"$set": {"remind": False, "reminded_for": doc["due_at"]}}
            result = await self._tasks.update_one(
                where | {"version": doc["version"]}, push(update, task_entry(make(from_doc(doc))))
            )
            return result.modified_count == 1


class Reminders(Protocol):
    """What the scan needs of the reminder store."""

    async def candidates(self, until: datetime, limit: int) -> list[str]:
        """Tasks owed a reminder, due at or before `until`."""

    async def claim(self, task_id: str, until: datetime, make: Callable[[Task], Envelope]) -> bool:
        """Record one reminder with its event; False if it was not owed."""


class Waker(Protocol):
    """Something to tell that events were written (the outbox relay)."""

    def wake(self) -> None:
        """Events were written: relay soon."""


class ReminderScan:
    """Emits task.due_soon.v1 once per due date, through the outbox."""

    def __init__(self, store: Reminders, settings: TasksSettings, relay: Waker) -> None:
        self._store = store
        self._settings = settings
        self._relay = relay

    async def run(self) -> None:
        """Scan periodically until cancelled."""
        while True:
            try:
                await self.scan()
            except Exception:  # the scan outlives a bad round; it is logged
                log.exception("reminder scan failed")
            # A periodic schedule, not a wait on a condition.
            await asyncio.sleep(self._settings.reminder_interval_s)

    async def scan(self) -> int:
        """Claim and emit every owed reminder now due within the lead time."""
        until = reminder_deadline(utcnow(), self._settings.reminder_lead_s)
        sent = 0
        for task_id in await self._store.candidates(until, 200):
            if await self._store.claim(task_id, until, _due_soon):
                sent += 1
        if sent:
            REMINDERS.inc(sent)
            self._relay.wake()
        return sent


def _due_soon(task: Task) -> Envelope:
    return new_event(TaskDueSoon(task=task.snapshot()), source=SOURCE, subject=task.owner)
