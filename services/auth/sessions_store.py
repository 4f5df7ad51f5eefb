"""Refresh-token families in MongoDB; their revocation events ride in the session's outbox.

The spent-token list is trimmed in Python: FerretDB 1.24 ignores `$push` with `$slice`. Every
write goes through this process's per-document lock (services.auth.process_locks).
"""

from datetime import datetime
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from common.events import RevokeReason
from common.outbox import PENDING, OutboxEntry, OutboxSource, push
from services.auth import legacy_outbox
from services.auth.domain import SPENT_REMEMBERED, Session
from services.auth.locked import LockedCollection

Doc = dict[str, Any]


class MongoSessions:
    """The `sessions` collection."""

    def __init__(self, db: AsyncDatabase[Doc]) -> None:
        self._docs = LockedCollection(db["sessions"])
        self.collection = self._docs.collection

    async def ensure_indexes(self) -> None:
        """Lookups by owner and of pending outboxes (old ones upgraded)."""
        await self.collection.create_index("user_id")
        await self.collection.create_index(PENDING)
        await legacy_outbox.upgrade(self._docs)

    def outbox_source(self) -> OutboxSource:
        """The collection as the outbox relay visits it."""
        return self._docs.outbox_source()

    async def insert(self, session: Session) -> None:
        """Store a new refresh-token family."""
        doc = session.model_dump(exclude={"id"}) | {"_id": session.id, "spent": []}
        await self.collection.insert_one(doc)

    async def get(self, session_id: str) -> Session | None:
        """The family with this id."""
        doc = await self.collection.find_one({"_id": session_id})
        return Session.model_validate({**doc, "id": doc["_id"]}) if doc else None

    async def rotate(self, session: Session, new_hash: str, now: datetime) -> bool:
        """Spend the current token (compare-and-set); False if another request got there first."""
        spent = list(session.spent)
        if session.previous_hash:
            spent.append(session.previous_hash)
        update = {
            "$set": {
                "current_hash": new_hash,
                "previous_hash": session.current_hash,
                "rotated_at": now,
                "spent": spent[-SPENT_REMEMBERED:],
            }
        }
        return await self._swap(session, update)

    async def regrant(self, session: Session, new_hash: str) -> bool:
        """Grace case: replace the current token; the one lost in transit joins the spent list."""
        spent = [*session.spent, session.current_hash][-SPENT_REMEMBERED:]
        return await self._swap(session, {"$set": {"current_hash": new_hash, "spent": spent}})

    async def _swap(self, session: Session, update: Doc) -> bool:
        """Apply `update` only if the family still has the token read and is not revoked."""
        match = {"current_hash": session.current_hash, "revoked": False}
        return await self._docs.update(session.id, update, **match)

    async def revoke(
        self, session_id: str, reason: RevokeReason, now: datetime, event: OutboxEntry
    ) -> bool:
        """Revoke one family with its event; False if it was revoked already."""
        revoked = {"revoked": True, "revoked_reason": reason, "revoked_at": now}
        return await self._docs.update(session_id, push({"$set": revoked}, event), revoked=False)

    async def mark_revoked_before(self, user_id: str, now: datetime) -> None:
        """Flag the user's families created before `now` as revoked.

        Clean-up only: the user's `sessions_valid_after` already makes refresh refuse them.
        """
        stale = self.collection.find(
            {"user_id": user_id, "revoked": False, "created_at": {"$lt": now}}, {"_id": 1}
        )
        async for doc in stale:
            await self._docs.update(doc["_id"], {"$set": {"revoked": True}})
