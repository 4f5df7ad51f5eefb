"""MongoDB access for users, sessions, their outboxes and the development signing key.

Every write that produces an event pushes it onto the document's `outbox` array in the same
update as the change (no transactions on FerretDB); `outbox_at` marks documents the relay must
visit. Only operators that FerretDB 1.24 and MongoDB both honour are used: `$pull` with a
condition and `$push` with `$slice` are silently ignored by FerretDB, so outbox entries leave by
`$pullAll` of the exact values read, and the spent-token list is trimmed in Python.

FerretDB 1.24 (SQLite) does not apply a conditional update atomically: two concurrent
`update_one({"_id": x, "v": 0}, ...)` both succeed, and concurrent `$inc`s lose updates (measured
here: 20 of 30 and 23 of 30 races). MongoDB does apply them atomically. So every write to one
document goes through a per-document lock in this process: with one auth replica on FerretDB, or
any number on MongoDB, compare-and-set and outbox pushes/removals cannot interleave.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from common.infra import MongoClient
from services.auth.domain import SPENT_REMEMBERED, EmailTakenError, Session, User

Doc = dict[str, Any]
OUTBOX_LEASE = timedelta(seconds=30)
_DEV_KEY_ID = "dev-signing-key"


def _user(doc: Doc) -> User:
    return User.model_validate({**doc, "id": doc["_id"]})


def _session(doc: Doc) -> Session:
    return Session.model_validate({**doc, "id": doc["_id"]})


def _with_event(update: Doc, entry: Doc, now: datetime) -> Doc:
    """Add one outbox entry to an update document."""
    update.setdefault("$set", {})["outbox_at"] = now
    update["$push"] = {"outbox": entry}
    return update


class DocLocks:
    """One asyncio lock per document being written; entries vanish when nobody holds them."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, collection: AsyncCollection[Doc], doc_id: str) -> AsyncIterator[None]:
        """Serialise this process's writes to one document."""
        key = f"{collection.name}/{doc_id}"
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


class AuthStore:
    """The auth service's collections."""

    def __init__(self, client: MongoClient, db_name: str) -> None:
        db = client[db_name]
        self.users: AsyncCollection[Doc] = db["users"]
        self.sessions: AsyncCollection[Doc] = db["sessions"]
        self._keys: AsyncCollection[Doc] = db["dev_keys"]
        self._locks = DocLocks()

    async def _update(
        self, collection: AsyncCollection[Doc], doc_id: str, update: Doc, **match: Any
    ) -> bool:
        """Update one document if it still matches; True if it did."""
        async with self._locks.hold(collection, doc_id):
            result = await collection.update_one({"_id": doc_id, **match}, update)
        return result.modified_count == 1

    async def _update_user(self, user_id: str, update: Doc, **match: Any) -> User | None:
        """Update a user if it still matches; the document as it is afterwards."""
        async with self._locks.hold(self.users, user_id):
            doc = await self.users.find_one_and_update(
                {"_id": user_id, **match}, update, return_document=ReturnDocument.AFTER
            )
        return _user(doc) if doc else None

    async def ensure_indexes(self) -> None:
        """Unique emails; lookups by reset token, by owner, and of pending outboxes."""
        await self.users.create_index("email", unique=True)
        await self.users.create_index("reset.token_hash")
        await self.users.create_index("outbox_at")
        await self.sessions.create_index("user_id")
        await self.sessions.create_index("outbox_at")

    # -- users ---------------------------------------------------------------------------------

    async def insert_user(self, user: User, event: Doc) -> None:
        """Store a new account with its user.registered event; EmailTakenError on a duplicate."""
        doc = user.model_dump(exclude={"id"}) | {
            "_id": user.id,
            "outbox": [event],
            "outbox_at": user.created_at,
        }
        try:
            await self.users.insert_one(doc)
        except DuplicateKeyError as exc:
            raise EmailTakenError(user.email) from exc

    async def user(self, user_id: str) -> User | None:
        """The account with this id."""
        doc = await self.users.find_one({"_id": user_id})
        return _user(doc) if doc else None

    async def user_by_email(self, email: str) -> User | None:
        """The account with this (normalised) email."""
        doc = await self.users.find_one({"email": email})
        return _user(doc) if doc else None

    async def replace_hash(self, user_id: str, old_hash: str, new_hash: str) -> None:
        """Swap in a rehashed password unless the password changed meanwhile."""
        await self._update(
            self.users, user_id, {"$set": {"password_hash": new_hash}}, password_hash=old_hash
        )

    async def rename(self, user_id: str, name: str) -> User | None:
        """Change the display name."""
        return await self._update_user(user_id, {"$set": {"name": name}})

    async def change_password(
        self, user_id: str, new_hash: str, now: datetime, event: Doc
    ) -> User | None:
        """New password; every session created before `now` is revoked in the same update."""
        update = _with_event(
            {
                "$set": {"password_hash": new_hash, "sessions_valid_after": now},
                "$unset": {"reset": ""},  # a reset link mailed earlier must not undo this change
            },
            event,
            now,
        )
        return await self._update_user(user_id, update)

    async def revoke_all(self, user_id: str, now: datetime, event: Doc) -> None:
        """Revoke every session of the user: the user document is the authority, sessions follow."""
        update = _with_event({"$set": {"sessions_valid_after": now}}, event, now)
        await self._update(self.users, user_id, update)
        # Clean-up only: refresh already refuses sessions older than sessions_valid_after.
        stale = self.sessions.find(
            {"user_id": user_id, "revoked": False, "created_at": {"$lt": now}}, {"_id": 1}
        )
        async for doc in stale:
            await self._update(self.sessions, doc["_id"], {"$set": {"revoked": True}})

    async def set_reset(
        self, user_id: str, token_hash: str, expires_at: datetime, now: datetime, event: Doc
    ) -> None:
        """Remember the (single) live reset token and queue the mail event."""
        reset = {"token_hash": token_hash, "expires_at": expires_at}
        await self._update(self.users, user_id, _with_event({"$set": {"reset": reset}}, event, now))

    async def user_by_reset(self, token_hash: str, now: datetime) -> User | None:
        """The account a live reset token belongs to."""
        doc = await self.users.find_one(
            {"reset.token_hash": token_hash, "reset.expires_at": {"$gt": now}}
        )
        return _user(doc) if doc else None

    async def consume_reset(
        self, user_id: str, token_hash: str, new_hash: str, now: datetime, event: Doc
    ) -> bool:
        """Spend the reset token, set the password, revoke every session; False if spent already."""
        update = _with_event(
            {
                "$set": {"password_hash": new_hash, "sessions_valid_after": now},
                "$unset": {"reset": ""},
            },
            event,
            now,
        )
        match = {"reset.token_hash": token_hash, "reset.expires_at": {"$gt": now}}
        return await self._update(self.users, user_id, update, **match)

    # -- sessions ------------------------------------------------------------------------------

    async def insert_session(self, session: Session) -> None:
        """Store a new refresh-token family."""
        doc = session.model_dump(exclude={"id"}) | {"_id": session.id, "spent": []}
        await self.sessions.insert_one(doc)

    async def session(self, session_id: str) -> Session | None:
        """The family with this id."""
        doc = await self.sessions.find_one({"_id": session_id})
        return _session(doc) if doc else None

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
        return await self._update(
            self.sessions, session.id, update, current_hash=session.current_hash, revoked=False
        )

    async def regrant(self, session: Session, new_hash: str) -> bool:
        """Grace case: replace the current token; the one lost in transit joins the spent list."""
        spent = [*session.spent, session.current_hash][-SPENT_REMEMBERED:]
        update = {"$set": {"current_hash": new_hash, "spent": spent}}
        return await self._update(
            self.sessions, session.id, update, current_hash=session.current_hash, revoked=False
        )

    async def revoke(self, session_id: str, reason: str, now: datetime, event: Doc) -> bool:
        """Revoke one family with its event; False if it was revoked already."""
        update = _with_event(
            {"$set": {"revoked": True, "revoked_reason": reason, "revoked_at": now}}, event, now
        )
        return await self._update(self.sessions, session_id, update, revoked=False)

    # -- outbox --------------------------------------------------------------------------------

    async def claim_outbox(self, collection: AsyncCollection[Doc], now: datetime) -> Doc | None:
        """Lease one document with pending events, so two relays do not publish the same ones."""
        free = {"$or": [{"outbox_lease": {"$exists": False}}, {"outbox_lease": {"$lt": now}}]}
        candidates = collection.find({"outbox_at": {"$exists": True}, **free}, {"_id": 1}, limit=20)
        async for candidate in candidates:
            async with self._locks.hold(collection, candidate["_id"]):
                # No projection: FerretDB 1.24 refuses one on findAndModify.
                doc = await collection.find_one_and_update(
                    {"_id": candidate["_id"], "outbox_at": {"$exists": True}, **free},
                    {"$set": {"outbox_lease": now + OUTBOX_LEASE}},
                    return_document=ReturnDocument.AFTER,
                )
            if doc is not None:
                return doc
        return None

    async def release_outbox(
        self,
        collection: AsyncCollection[Doc],
        doc_id: str,
        published: Sequence[Doc],
        *,
        keep_lease: bool = False,
    ) -> None:
        """Drop the published entries (and the lease); unmark the document once nothing is left."""
        update: Doc = {} if keep_lease else {"$unset": {"outbox_lease": ""}}
        if published:
            update["$pullAll"] = {"outbox": list(published)}
        async with self._locks.hold(collection, doc_id):
            if update:
                await collection.update_one({"_id": doc_id}, update)
            await collection.update_one(
                {"_id": doc_id, "outbox": {"$size": 0}}, {"$unset": {"outbox_at": ""}}
            )

    async def pending_events(self) -> int:
        """How many events wait in every outbox (tests and diagnostics)."""
        total = 0
        for collection in (self.users, self.sessions):
            async for doc in collection.find({"outbox_at": {"$exists": True}}, {"outbox": 1}):
                total += len(doc.get("outbox", []))
        return total

    # -- development signing key ---------------------------------------------------------------

    async def dev_key(self, kid: str, pem: str) -> tuple[str, str]:
        """The shared development key: the first replica's proposal wins, everyone reads it back."""
        # An insert on the unique _id is atomic even on FerretDB: exactly one proposal lands.
        with contextlib.suppress(DuplicateKeyError):
            await self._keys.insert_one({"_id": _DEV_KEY_ID, "kid": kid, "pem": pem})
        doc = await self._keys.find_one({"_id": _DEV_KEY_ID})
        if doc is None:
            raise RuntimeError("development key vanished after upsert")
        return str(doc["kid"]), str(doc["pem"])
