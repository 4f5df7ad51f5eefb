"""Relay leases: which relay publishes a document's outbox right now (lock documents).

A lease is a document with a unique `_id` per (source, document): its insert is atomic on FerretDB
too, so two relays never publish one document's events concurrently. A batch takes and releases
all its leases in one call each; an expired lease (its relay died) may be taken over.
"""

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError

from common.clock import Clock

Doc = dict[str, Any]
_DUPLICATE_KEY = 11000


class Leases:
    """Per-document relay leases as lock documents; an expired lease may be taken over."""

    def __init__(self, collection: AsyncCollection[Doc], now: Clock, ttl: timedelta) -> None:
        self._coll = collection
        self._now = now
        self._ttl = ttl

    async def held(self, source: str) -> list[str]:
        """Ids of the source's documents under a live lease."""
        found = self._coll.find({"source": source, "expires_at": {"$gt": self._now()}}, {"doc": 1})
        return [lease["doc"] async for lease in found]

    async def take(self, source: str, doc_ids: Sequence[str]) -> tuple[str, list[str]]:
        """A token and the ids whose lease was free (or expired) and is now ours."""
        token, now = uuid.uuid4().hex, self._now()
        leases = [self._lease(source, d, token, now) for d in doc_ids]
        taken = await self._insert(leases)
        refused = [lease["_id"] for lease in leases if lease["doc"] not in taken]
        if refused:
            # An expired lease is free: remove those still expired and try them once more.
            stale = {"_id": {"$in": refused}, "expires_at": {"$lte": now}}
            if (await self._coll.delete_many(stale)).deleted_count:
                taken += await self._insert([lease for lease in leases if lease["_id"] in refused])
        return token, taken

    def _lease(self, source: str, doc_id: str, token: str, now: datetime) -> Doc:
        key = f"{source}/{doc_id}"
        expires = now + self._ttl
        return {"_id": key, "source": source, "doc": doc_id, "expires_at": expires, "holder": token}

    async def _insert(self, leases: list[Doc]) -> list[str]:
        """Insert the leases at once; the document ids of those that were free."""
        inserted = await insert_free(self._coll, leases)
        return [lease["doc"] for n, lease in enumerate(leases) if n in inserted]

    async def release_each(self, source: str, tokens: dict[str, str]) -> None:
        """Give up leases taken with different tokens: {document id: its token}."""
        by_token: dict[str, list[str]] = {}
        for doc_id, token in tokens.items():
            by_token.setdefault(token, []).append(doc_id)
        for token, doc_ids in by_token.items():
            await self.release(source, doc_ids, token)

    async def release(self, source: str, doc_ids: Sequence[str], token: str) -> None:
        """Give the leases up (only those still ours)."""
        if doc_ids:
            keys = [f"{source}/{d}" for d in doc_ids]
            await self._coll.delete_many({"_id": {"$in": keys}, "holder": token})


async def insert_free(coll: AsyncCollection[Doc], docs: Sequence[Doc]) -> set[int]:
    """Insert lock-like documents in one call; the indexes of those whose `_id` was free."""
    if not docs:
        return set()
    try:
        await coll.insert_many(list(docs), ordered=False)
    except BulkWriteError as exc:
        errors = exc.details.get("writeErrors", [])
        if any(error.get("code") != _DUPLICATE_KEY for error in errors):
            raise
        taken = {error["index"] for error in errors}
        return {n for n in range(len(docs)) if n not in taken}
    return set(range(len(docs)))
