"""MongoDB access for tasks: documents, indexes, locked read-modify-write, outbox entries.

Only features FerretDB 1.24 and MongoDB share: no transactions, no change streams, no $lookup.
"""

from collections.abc import Callable
from datetime import datetime
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING, DESCENDING, IndexModel, ReturnDocument, WriteConcern
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import AutoReconnect, DuplicateKeyError, OperationFailure

from common.events import Envelope, Payload
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
from services.tasks.locks import DocLocks
from services.tasks.queries import NO_DUE, SORT_INDEX, list_filter, list_sort

Doc = dict[str, Any]
Wrap = Callable[[Payload], Envelope]
Mutation = Callable[[Task], tuple[Task, Payload | None]]
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
    IndexModel([("pending", ASCENDING)], name="outbox_pending"),
    IndexModel([("remind", ASCENDING), ("due_at", ASCENDING)], name="reminders"),
]


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


def outbox_entry(event: Envelope) -> Doc:
    """An outbox array element; the relay removes it by exact value after publishing."""
    return {"id": event.id, "event": event.model_dump(mode="json")}


class TaskStore:
    """The tasks collection and its lock documents."""

    def __init__(
        self, db: AsyncDatabase[Doc], *, locks: bool, lock_wait_s: float, outbox_max: int
    ) -> None:
        # Acknowledged means replicated to a majority: a failover cannot roll a write back.
        majority = WriteConcern(w="majority")
        self.tasks: AsyncCollection[Doc] = db.get_collection("tasks", write_concern=majority)
        lock_docs: AsyncCollection[Doc] = db.get_collection("locks", write_concern=majority)
        self.locks = DocLocks(lock_docs, enabled=locks)
        # Relay leases are wanted on MongoDB too: one replica publishes a task's outbox at a time.
        self.leases = DocLocks(lock_docs)
        self._wait = lock_wait_s
        self._outbox_max = outbox_max

    def _where(self, task_id: str, **read: Any) -> Doc:
        """The filter of a write that must only apply to the state read.

        Under a lock the state cannot change, so `_id` alone: the one filter FerretDB pushes
        down (any other filter scans the whole collection). Without locks (MongoDB), the
        conditions make the single-document update atomic compare-and-set.
        """
        return {"_id": task_id} if self.locks.enabled else {"_id": task_id, **read}

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

    async def create(
        self, task: Task, event: Envelope, *, idem_key: str | None, fingerprint: str
    ) -> tuple[Task, bool]:
        """Insert the task with its created event; (task, replayed) for an Idempotency-Key retry."""
        doc = to_doc(task) | {
            "deleted": False,
            "idem": f"k:{idem_key}" if idem_key else f"id:{task.id}",
            "fp": fingerprint,
            "remind": wants_reminder(task, None),
            "reminded_for": None,
            "outbox": [outbox_entry(event)],
            "pending": True,
        }
        try:
            await self.tasks.insert_one(doc)
        except DuplicateKeyError:
            if not idem_key:
                raise
            first = await self.tasks.find_one({"owner": task.owner, "idem": f"k:{idem_key}"})
            if first is None:
                raise
            if first["fp"] != fingerprint:
                raise IdempotencyMismatchError(idem_key) from None
            if first["deleted"]:
                raise IdempotentTaskGoneError(idem_key) from None
            return from_doc(first), True
        return task, False

    async def get(self, owner: str, task_id: str) -> Task:
        """The live task, or TaskNotFoundError."""
        return from_doc(await self._live(owner, task_id))

    async def _live(self, owner: str, task_id: str) -> Doc:
        # Filter on _id alone: the one filter FerretDB pushes down to its primary key.
        doc = await self.tasks.find_one({"_id": task_id})
        if doc is None or doc["owner"] != owner or doc["deleted"]:
            raise TaskNotFoundError(task_id)
        return doc

    async def mutate(self, owner: str, task_id: str, change: Mutation, wrap: Wrap) -> Task:
        """Apply `change` atomically with its event; retried when a concurrent write wins."""
        async with self.locks.hold(f"w:{task_id}", wait_s=self._wait) as held:
            if not held:
                raise BusyError(f"{task_id}: lock wait timed out")
            for _ in range(5):
                doc = await self._live(owner, task_id)
                before = from_doc(doc)
                after, payload = change(before)
                if payload is None:
                    return before
                if len(doc["outbox"]) >= self._outbox_max:
                    raise BusyError(
                        f"{task_id}: outbox full"
                    )  # Kafka has been down long: push back, lose nothing
                fields = to_doc(after)
                fields.pop("_id")
                fields["remind"] = wants_reminder(after, doc["reminded_for"])
                if await self._write(doc, {"$set": fields}, wrap(payload)):
                    return after
        raise BusyError(f"{task_id}: kept losing to concurrent writes")

    async def delete(
        self, owner: str, task_id: str, check: Callable[[Task], Payload], wrap: Wrap
    ) -> None:
        """Turn the task into a tombstone holding its deleted event; the relay removes it later."""
        async with self.locks.hold(f"w:{task_id}", wait_s=self._wait) as held:
            if not held:
                raise BusyError(f"{task_id}: lock wait timed out")
            for _ in range(5):
                doc = await self._live(owner, task_id)
                payload = check(from_doc(doc))
                update = {"$set": {"deleted": True, "remind": False}, "$inc": {"version": 1}}
                if await self._write(doc, update, wrap(payload)):
                    return
        raise BusyError(f"{task_id}: kept losing to concurrent writes")

    async def _write(self, doc: Doc, update: Doc, event: Envelope) -> bool:
        """Conditional on the version read, so a concurrent writer can never be overwritten."""
        update.setdefault("$set", {})["pending"] = True
        update["$push"] = {"outbox": outbox_entry(event)}
        where = self._where(doc["_id"], version=doc["version"], deleted=False)
        result = await self.tasks.update_one(where, update)
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

    # --- outbox relay -------------------------------------------------------------------

    async def pending_ids(self, limit: int) -> list[str]:
        """Tasks whose outbox holds unpublished events."""
        found = self.tasks.find({"pending": True}, {"_id": 1}).hint("outbox_pending").limit(limit)
        return [doc["_id"] async for doc in found]

    async def pending_events(self) -> int:
        """How many events wait in every task's outbox (the backlog gauge)."""
        total = 0
        async for doc in self.tasks.find({"pending": True}, {"outbox": 1}).hint("outbox_pending"):
            total += len(doc.get("outbox", []))
        return total

    async def outbox(self, task_id: str) -> list[Doc]:
        """The task's unpublished events, oldest first."""
        doc = await self.tasks.find_one({"_id": task_id}, {"outbox": 1})
        return list(doc["outbox"]) if doc else []

    async def remove_published(self, task_id: str, entries: list[Doc]) -> None:
        """Drop exactly these entries; clear the flag or the tombstone once nothing is left."""
        async with self.locks.hold(f"w:{task_id}", wait_s=self._wait) as held:
            if not held:
                return  # the entries stay and are published again: duplicates, never losses
            doc = await self.tasks.find_one_and_update(
                {"_id": task_id},
                {"$pullAll": {"outbox": entries}},
                return_document=ReturnDocument.AFTER,  # no projection: FerretDB 1.24 refuses it
            )
            if doc is None or doc["outbox"]:
                return  # new events arrived meanwhile: the task stays pending
            if doc["deleted"]:
                where = self._where(task_id, outbox={"$size": 0}, deleted=True)
                await self.tasks.delete_one(where)
            elif doc["pending"]:
                where = self._where(task_id, outbox={"$size": 0}, pending=True)
                await self.tasks.update_one(where, {"$set": {"pending": False}})

    # --- due-date reminders -------------------------------------------------------------

    async def reminder_candidates(self, until: datetime, limit: int) -> list[str]:
        """Tasks owed a reminder whose due date is at or before `until`."""
        found = (
            self.tasks.find({"remind": True, "due_at": {"$lte": until}}, {"_id": 1})
            .hint("reminders")
            .limit(limit)
        )
        return [doc["_id"] async for doc in found]

    async def claim_reminder(
        self, task_id: str, until: datetime, make: Callable[[Task], Envelope]
    ) -> bool:
        """Record the reminder and its event once; False if already sent or no longer due."""
        async with self.locks.hold(f"w:{task_id}", wait_s=self._wait) as held:
            if not held:
                return False
            doc = await self.tasks.find_one({"_id": task_id})
            if doc is None or not doc["remind"] or doc["deleted"] or doc["due_at"] > until:
                return False
            event = make(from_doc(doc))
            result = await self.tasks.update_one(
                self._where(task_id, remind=True, due_at=doc["due_at"], version=doc["version"]),
                {
                    "$set": {"remind": False, "reminded_for": doc["due_at"], "pending": True},
                    "$push": {"outbox": outbox_entry(event)},
                },
            )
            return result.modified_count == 1


def new_task_id() -> str:
    """A fresh task id (ObjectId hex: 24 lowercase hex digits)."""
    return str(ObjectId())
