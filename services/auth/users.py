"""Accounts in MongoDB; events about them ride in the user document's outbox (common.outbox).

Only operators that FerretDB 1.24 and MongoDB both honour are used (`$pull` with a condition and
`$push` with `$slice` are silently ignored by FerretDB). Every write goes through this process's
per-document lock (services.auth.process_locks).
"""

from datetime import datetime
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from common.outbox import PENDING, OutboxEntry, OutboxSource, push, with_entries
from services.auth import legacy_outbox
from services.auth.domain import EmailTakenError, User
from services.auth.locked import LockedCollection

Doc = dict[str, Any]


def _user(doc: Doc | None) -> User | None:
    return User.model_validate({**doc, "id": doc["_id"]}) if doc else None


class MongoUsers:
    """The `users` collection."""

    def __init__(self, db: AsyncDatabase[Doc]) -> None:
        self._docs = LockedCollection(db["users"])
        self.collection = self._docs.collection

    async def ensure_indexes(self) -> None:
        """Unique emails; lookups by reset token and of pending outboxes (old ones upgraded)."""
        await self.collection.create_index("email", unique=True)
        await self.collection.create_index("reset.token_hash")
        await self.collection.create_index(PENDING)
        await legacy_outbox.upgrade(self._docs)

    def outbox_source(self) -> OutboxSource:
        """The collection as the outbox relay visits it."""
        return self._docs.outbox_source()

    async def insert(self, user: User, event: OutboxEntry) -> None:
        """Store a new account with its user.registered event; EmailTakenError on a duplicate."""
        doc = with_entries(user.model_dump(exclude={"id"}) | {"_id": user.id}, event)
        try:
            await self.collection.insert_one(doc)
        except DuplicateKeyError as exc:
            raise EmailTakenError(user.email) from exc

    async def get(self, user_id: str) -> User | None:
        """The account with this id."""
        return _user(await self.collection.find_one({"_id": user_id}))

    async def by_email(self, email: str) -> User | None:
        """The account with this (normalised) email."""
        return _user(await self.collection.find_one({"email": email}))

    async def replace_hash(self, user_id: str, old_hash: str, new_hash: str) -> None:
        """Swap in a rehashed password unless the password changed meanwhile."""
        update = {"$set": {"password_hash": new_hash}}
        await self._docs.update(user_id, update, password_hash=old_hash)

    async def rename(self, user_id: str, name: str) -> User | None:
        """Change the display name."""
        return _user(await self._docs.update_and_read(user_id, {"$set": {"name": name}}))

    async def change_password(
        self, user_id: str, new_hash: str, now: datetime, event: OutboxEntry
    ) -> User | None:
        """New password; every session created before `now` is revoked in the same update."""
        return _user(await self._docs.update_and_read(user_id, _new_password(new_hash, now, event)))

    async def revoke_sessions(self, user_id: str, now: datetime, event: OutboxEntry) -> None:
        """Revoke every session created before `now`: refresh refuses them from then on."""
        await self._docs.update(user_id, push({"$set": {"sessions_valid_after": now}}, event))

    async def set_reset(
        self, user_id: str, token_hash: str, expires_at: datetime, now: datetime, event: OutboxEntry
    ) -> None:
        """Remember the (single) live reset token and queue the mail event."""
        reset = {"token_hash": token_hash, "expires_at": expires_at}
        await self._docs.update(user_id, push({"$set": {"reset": reset}}, event))

    async def by_reset(self, token_hash: str, now: datetime) -> User | None:
        """The account a live reset token belongs to."""
        live = {"reset.token_hash": token_hash, "reset.expires_at": {"$gt": now}}
        return _user(await self.collection.find_one(live))

    async def consume_reset(
        self, user_id: str, token_hash: str, new_hash: str, now: datetime, event: OutboxEntry
    ) -> bool:
        """Spend the reset token, set the password, revoke every session; False if spent already."""
        match = {"reset.token_hash": token_hash, "reset.expires_at": {"$gt": now}}
        return await self._docs.update(user_id, _new_password(new_hash, now, event), **match)


def _new_password(new_hash: str, now: datetime, event: OutboxEntry) -> Doc:
    """The update that sets a password, cuts off older sessions and spends any reset link."""
    change = {
        "$set": {"password_hash": new_hash, "sessions_valid_after": now},
        "$unset": {"reset": ""},  # a reset link mailed earlier must not undo this change
    }
    return push(change, event)
