"""The tasks outbox: events wait in their task document's `outbox` array until relayed."""

from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection

from common.events import Envelope
from services.tasks.locks import DocLocks

Doc = dict[str, Any]


def outbox_entry(event: Envelope) -> Doc:
    """An outbox array element; the relay removes it by exact value after publishing."""
    return {"id": event.id, "event": event.model_dump(mode="json")}


def with_event(update: Doc, event: Envelope) -> Doc:
    """Add the event to an update document, in the same single-document write as the change."""
    update.setdefault("$set", {})["pending"] = True
    update["$push"] = {"outbox": outbox_entry(event)}
    return update


class OutboxStore:
    """The outbox arrays of the tasks collection, as the relay sees them."""

    def __init__(self, tasks: AsyncCollection[Doc], locks: DocLocks, *, wait_s: float) -> None:
        self._tasks = tasks
        # Removal rewrites the task document on FerretDB: it takes the task's write lock.
        self._locks = locks
        # Relay leases are wanted on MongoDB too: one replica publishes a task's outbox at a time.
        self.leases = DocLocks(locks.collection)
        self._wait = wait_s

    async def pending_ids(self, limit: int) -> list[str]:
        """Tasks whose outbox holds unpublished events."""
        found = self._tasks.find({"pending": True}, {"_id": 1}).hint("outbox_pending").limit(limit)
        return [doc["_id"] async for doc in found]

    async def pending_events(self) -> int:
        """How many events wait in every task's outbox (the backlog gauge)."""
        total = 0
        async for doc in self._tasks.find({"pending": True}, {"outbox": 1}).hint("outbox_pending"):
            total += len(doc.get("outbox", []))
        return total

    async def outbox(self, task_id: str) -> list[Doc]:
        """The task's unpublished events, oldest first."""
        doc = await self._tasks.find_one({"_id": task_id}, {"outbox": 1})
        return list(doc["outbox"]) if doc else []

    async def remove_published(self, task_id: str, entries: list[Doc]) -> None:
        """Drop exactly these entries; clear the flag or the tombstone once nothing is left."""
        async with self._locks.hold(f"w:{task_id}", wait_s=self._wait) as held:
            if not held:
                return  # the entries stay and are published again: duplicates, never losses
            doc = await self._tasks.find_one_and_update(
                {"_id": task_id},
                {"$pullAll": {"outbox": entries}},
                return_document=ReturnDocument.AFTER,  # no projection: FerretDB 1.24 refuses it
            )
            if doc is None or doc["outbox"]:
                return  # new events arrived meanwhile: the task stays pending
            empty = {"_id": task_id, "outbox": {"$size": 0}, "version": doc["version"]}
            if doc["deleted"]:
                await self._tasks.delete_one(empty | {"deleted": True})
            elif doc["pending"]:
                await self._tasks.update_one(
                    empty | {"pending": True}, {"$set": {"pending": False}}
                )
