"""A collection whose writes go through this process's per-document locks (see process_locks)."""

from contextlib import AbstractAsyncContextManager
from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection

from common.outbox import OutboxSource, each
from services.auth.process_locks import ProcessLocks

Doc = dict[str, Any]


class LockedCollection:
    """Writes to one document serialised in this process; the relay's removals included."""

    def __init__(self, collection: AsyncCollection[Doc]) -> None:
        self.collection = collection
        self._locks = ProcessLocks()

    def guard(self, doc_id: str) -> AbstractAsyncContextManager[bool]:
        """The lock every write to this document takes."""
        return self._locks.hold(doc_id)

    async def update(self, doc_id: str, update: Doc, **match: Any) -> bool:
        """Update one document if it still matches; True if it did."""
        async with self.guard(doc_id):
            result = await self.collection.update_one({"_id": doc_id, **match}, update)
        return result.modified_count == 1

    async def update_and_read(self, doc_id: str, update: Doc, **match: Any) -> Doc | None:
        """Update one document if it still matches; the document as it is afterwards."""
        async with self.guard(doc_id):
            return await self.collection.find_one_and_update(
                {"_id": doc_id, **match}, update, return_document=ReturnDocument.AFTER
            )

    def outbox_source(self) -> OutboxSource:
        """This collection for the outbox relay, whose removals take the same locks."""
        return OutboxSource(self.collection, guard=each(self.guard))
