"""MongoDB access for the tasks themselves: documents, indexes, version-checked writes.

Only features FerretDB 1.24 and MongoDB share: no transactions, no change streams, no $lookup.
Events ride in the task document (common.outbox, relayed by events.py); reminder claims are in
reminders.py.
"""

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING, DESCENDING, IndexModel, WriteConcern
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import AutoReconnect, DuplicateKeyError, OperationFailure

from common.clock import Clock, utcnow
from common.events import Envelope
from common.outbox import PENDING, OutboxEntry, push, with_entries
from services.tasks.domain import (
    PRIORITY_RANK,
    RANK_PRIORITY,
    BusyError,
    CursorPosition,
    IdempotencyMismatchError,
    IdempotentTaskGoneError,
    ListQuery,
    Task,
    TaskNotFoundError,
    TaskStats,
    wants_reminder,
)
from services.tasks.events import task_entry
from services.tasks.locks import DocLocks, write_key
from services.tasks.queries import NO_DUE, SORT_INDEX, list_filter, list_sort

Doc = dict[str, Any]
# Ids of the last commands applied to a task (services/tasks/commands.py): a redelivered update
# finds its id here and has no second effect. Commands of one user arrive in order, so a
# redelivery is never older than this many later commands to the same task.
COMMANDS_KEPT = 32

INDEXES = [
    IndexModel([("owner", ASCENDING), ("status", ASCENDING)], name="owner_status"),
    # The _id suffix lets keyset pagination walk the index without an in-memory sort.
    IndexModel(
        [("owner", ASCENDING), ("priority", ASCENDING), ("_id", ASCENDING)],
        name="owner_priority",
    ),
    IndexModel(
        [("owner", ASCENDING), ("created_at", DESCENDING), ("_id", DESCENDING)],
        name="owner_created_at",
    ),
    IndexModel(
        [("owner", ASCENDING), ("due_at", ASCENDING), ("_id", ASCENDING)], name="owner_due_at"
    ),
    IndexModel([("owner", ASCENDING), ("idem", ASCENDING)], name="owner_idem", unique=True),
    IndexModel([(PENDING, ASCENDING)], name="outbox_pending"),
    IndexModel([("remind", ASCENDING), ("due_at", ASCENDING)], name="reminders"),
]
# Dropped at start-up: the index of the outbox mark before tasks used common.outbox.
LEGACY_INDEXES = {"outbox_pending": [("pending", 1)]}


def to_doc(task: Task) -> Doc:
    """The stored form of a task's own fields."""
    return {
        "_id": task.id,
        "owner": task.owner,
        "title": task.title,
        "description": task.description,
        "status": task.status,
        "priority": PRIORITY_RANK[task.priority],
        "due_at": task.due_at or NO_DUE,
        "tags": list(task.tags),
        "created_at": task.created_at,
        "updated_at": task.updated_at,
        "completed_at": task.completed_at,
        "version": task.version,
    }


def from_doc(doc: Doc) -> Task:
    """The task a stored document holds."""
    due = doc["due_at"]
    return Task(
        id=doc["_id"],
        owner=doc["owner"],
        title=doc["title"],
        description=doc["description"],
        status=doc["status"],
        priority=RANK_PRIORITY[doc["priority"]],
        due_at=None if due >= NO_DUE else due,
        tags=tuple(doc["tags"]),
        created_at=doc["created_at"],
        updated_at=doc["updated_at"],
        completed_at=doc["completed_at"],
        version=doc["version"],
    )


def new_doc(task: Task, *, idem_key: str | None, fingerprint: str) -> Doc:
    """The stored form of a new task, before its outbox."""
    return to_doc(task) | {
        "deleted": False,
        "idem": f"k:{idem_key}" if idem_key else f"id:{task.id}",
        "fp": fingerprint,
        "remind": wants_reminder(task, None),
        "reminded_for": None,
    }


def created_outbox(event: Envelope, also: Sequence[OutboxEntry] = ()) -> list[OutboxEntry]:
    """The outbox a new task is inserted with (its writer hands it to the relay as is)."""
    return [task_entry(event), *also]


@dataclass(frozen=True)
class Stored:
    """A live task as read for a write, with the stored state the write depends on."""

    task: Task
    reminded_for: datetime | None
    outbox_size: int
    commands: tuple[str, ...] = ()


class TaskStore:
    """The tasks collection and the write locks of its documents."""

    def __init__(
        self,
        db: AsyncDatabase[Doc],
        *,
        locks: bool,
        lock_wait_s: float,
        outbox_max: int,
        clock: Clock = utcnow,
    ) -> None:
        # Acknowledged means replicated to a majority: a failover cannot roll a write back.
        majority = WriteConcern(w="majority")
        self.tasks: AsyncCollection[Doc] = db.get_collection("tasks", write_concern=majority)
        lock_docs: AsyncCollection[Doc] = db.get_collection("locks", write_concern=majority)
        self.locks = DocLocks(lock_docs, enabled=locks, clock=clock)
        self.lock_wait_s = lock_wait_s
        self._outbox_max = outbox_max

    @asynccontextmanager
    async def locked(self, task_id: str) -> AsyncIterator[None]:
        """Hold the task's write lock, or raise BusyError if it stays taken too long."""
        async with self.locks.hold(write_key(task_id), wait_s=self.lock_wait_s) as held:
            if not held:
                raise BusyError(f"{task_id}: lock wait timed out")
            yield

    async def ensure_indexes(self) -> None:
        """Create the missing indexes; fail if one exists under our name with other keys.

        Only the missing ones: FerretDB 1.24 drops the connection when createIndexes names an
        index that already exists. Replicas starting together may race; the loser re-checks.
        """
        wanted = {ix.document["name"]: list(ix.document["key"].items()) for ix in INDEXES}
        for attempt in range(3):
            existing = {
                ix["name"]: list(ix["key"].items()) async for ix in await self.tasks.list_indexes()
            }
            await self._drop_legacy(existing)
            wrong = [n for n in wanted if n in existing and existing[n] != wanted[n]]
            if wrong:
                raise RuntimeError(f"indexes {wrong} exist with other keys; drop them first")
            missing = [ix for ix in INDEXES if ix.document["name"] not in existing]
            if not missing:
                return
            try:
                await self.tasks.create_indexes(missing)
            except (OperationFailure, AutoReconnect):
                if attempt == 2:
                    raise

    async def _drop_legacy(self, existing: dict[str, list[Any]]) -> None:
        for name, keys in LEGACY_INDEXES.items():
            if existing.get(name) == keys:
                # A replica starting at the same time may have dropped it first.
                with suppress(OperationFailure):
                    await self.tasks.drop_index(name)
                del existing[name]

    async def create(
        self,
        task: Task,
        event: Envelope,
        *,
        idem_key: str | None,
        fingerprint: str,
        also: Sequence[OutboxEntry] = (),
    ) -> tuple[Task, bool]:
        """Insert the task with its created event (and `also`); (task, replayed) for a retry."""
        doc = new_doc(task, idem_key=idem_key, fingerprint=fingerprint)
        try:
            await self.tasks.insert_one(with_entries(doc, *created_outbox(event, also)))
        except DuplicateKeyError:
            if not idem_key:
                raise
            first = await self.created_by(task.owner, idem_key)
            if first is None:
                raise
            if first["fp"] != fingerprint:
                raise IdempotencyMismatchError(idem_key) from None
            if first["deleted"]:
                raise IdempotentTaskGoneError(idem_key) from None
            return from_doc(first), True
        return task, False

    async def created_by(self, owner: str, idem_key: str) -> Doc | None:
        """The task (or tombstone) an Idempotency-Key created, if any (a scan on FerretDB)."""
        return await self.tasks.find_one({"owner": owner, "idem": f"k:{idem_key}"})

    async def get(self, owner: str, task_id: str) -> Task:
        """The live task, or TaskNotFoundError."""
        return from_doc(await self._live(owner, task_id))

    async def load(self, owner: str, task_id: str) -> Stored:
        """The live task as read for a write, or TaskNotFoundError."""
        doc = await self._live(owner, task_id)
        commands = tuple(doc.get("commands", ()))
        return Stored(from_doc(doc), doc["reminded_for"], len(doc["outbox"]), commands)

    async def _live(self, owner: str, task_id: str) -> Doc:
        # FerretDB 1.24 fetches by _id whatever else the filter holds; ownership is checked
        # here so that a miss and another user's task look the same (404, never 403).
        doc = await self.tasks.find_one({"_id": task_id})
        if doc is None or doc["owner"] != owner or doc["deleted"]:
            raise TaskNotFoundError(task_id)
        return doc

    async def save(
        self,
        before: Stored,
        after: Task,
        event: Envelope,
        *,
        also: Sequence[OutboxEntry] = (),
        command: str | None = None,
    ) -> bool:
        """Store `after` with its event (and `also`) unless the task changed since `before`.

        `command` (a command's producer and id) is remembered with the change, in the same write.
        """
        fields = to_doc(after)
        fields.pop("_id")
        fields["remind"] = wants_reminder(after, before.reminded_for)
        if command is not None:
            fields["commands"] = [*before.commands, command][-COMMANDS_KEPT:]
        return await self._write(before, {"$set": fields}, event, *also)

    async def bury(self, before: Stored, event: Envelope) -> bool:
        """Make the task a tombstone holding its deleted event, unless it changed since read.

        The relay removes the tombstone once the event is published.
        """
        update = {"$set": {"deleted": True, "remind": False}, "$inc": {"version": 1}}
        return await self._write(before, update, event)

    async def _write(
        self, before: Stored, update: Doc, event: Envelope, *also: OutboxEntry
    ) -> bool:
        """Conditional on the version read, so a concurrent writer can never be overwritten.

        Also under a write lock: a holder that stalled past the lock's TTL finds a newer
        version and matches nothing. FerretDB still pushes the `_id` part of the filter down.
        """
        if before.outbox_size >= self._outbox_max:
            # Kafka has been down long: push back, lose nothing.
            raise BusyError(f"{before.task.id}: outbox full")
        where = {"_id": before.task.id, "version": before.task.version, "deleted": False}
        result = await self.tasks.update_one(where, push(update, task_entry(event), *also))
        return result.modified_count == 1

    async def page(
        self, owner: str, query: ListQuery, after: CursorPosition | None
    ) -> tuple[list[Task], CursorPosition | None]:
        """One page, plus the position after its last item when more may follow."""
        cursor = (
            self.tasks.find(list_filter(owner, query, after), {"outbox": 0})
            .sort(list_sort(query))
            .limit(query.limit + 1)
            .hint(SORT_INDEX[query.sort_field])
        )
        docs = await cursor.to_list()
        more = len(docs) > query.limit
        docs = docs[: query.limit]
        last = docs[-1] if more else None
        position = CursorPosition(value=last[query.sort_field], id=last["_id"]) if last else None
        return [from_doc(d) for d in docs], position

    async def stats(self, owner: str) -> TaskStats:
        """Counts by status and by priority of the owner's live tasks."""
        pipeline: list[Doc] = [
            {"$match": {"owner": owner, "deleted": False}},
            {"$group": {"_id": {"s": "$status", "p": "$priority"}, "n": {"$sum": 1}}},
        ]
        by_status = dict.fromkeys(("todo", "in_progress", "done"), 0)
        by_priority = dict.fromkeys(PRIORITY_RANK, 0)
        async for row in await self.tasks.aggregate(pipeline):
            by_status[row["_id"]["s"]] += row["n"]
            by_priority[RANK_PRIORITY[row["_id"]["p"]]] += row["n"]
        return TaskStats.model_validate(
            {"total": sum(by_status.values()), "by_status": by_status, "by_priority": by_priority}
        )


def new_task_id() -> str:
    """A fresh task id (ObjectId hex: 24 lowercase hex digits)."""
    return str(ObjectId())
