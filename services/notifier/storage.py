"""The notifier's own MongoDB data: delivery claims, the recipient directory, preferences, rates.

Only single-document atomic operations are used (FerretDB has no transactions).
"""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pymongo import ASCENDING, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from services.notifier.domain import Preferences

Doc = dict[str, Any]
ClaimStatus = Literal["claimed", "done", "busy"]
# Terminal states: the event is finished for this consumer, a redelivery changes nothing.
_FINISHED = ("sent", "suppressed")


@dataclass(frozen=True)
class Claim:
    """The outcome of trying to take an event for sending."""

    status: ClaimStatus
    # True only for the very first claim of this event (not a retry or a takeover).
    fresh: bool = False
    # The state found when the claim was taken over ("sending" means a sender died mid-way).
    previous: str | None = None


class Store:
    """Typed access to the notifier database."""

    def __init__(self, db: AsyncDatabase[Doc]) -> None:
        self._deliveries = db["deliveries"]
        self._recipients = db["recipients"]
        self._preferences = db["preferences"]
        self._rates = db["rates"]

    async def ensure_indexes(self) -> None:
        """The unique (consumer, event_id) index is what makes consumption idempotent."""
        await self._deliveries.create_index(
            [("consumer", ASCENDING), ("event_id", ASCENDING)],
            unique=True,
            name="consumer_event_unique",
        )

    async def claim(self, consumer: str, event_id: str, owner: str, lease_s: float) -> Claim:
        """Take the event for sending unless it is finished or another sender holds a live lease."""
        now = datetime.now(UTC)
        lease_until = now + timedelta(seconds=lease_s)
        try:
            await self._deliveries.insert_one(
                {
                    "consumer": consumer,
                    "event_id": event_id,
                    "state": "sending",
                    "owner": owner,
                    "lease_until": lease_until,
                    "attempts": 1,
                    "created_at": now,
                    "updated_at": now,
                }
            )
            return Claim("claimed", fresh=True)
        except DuplicateKeyError:
            pass
        takeable = {
            "consumer": consumer,
            "event_id": event_id,
            "$or": [
                {"state": {"$in": ["retrying", "dead"]}},
                {"state": "sending", "lease_until": {"$lt": now}},
            ],
        }
        before = await self._deliveries.find_one_and_update(
            takeable,
            {
                "$set": {
                    "state": "sending",
                    "owner": owner,
                    "lease_until": lease_until,
                    "updated_at": now,
                },
                "$inc": {"attempts": 1},
            },
            return_document=ReturnDocument.BEFORE,
        )
        if before is not None:
            return Claim("claimed", previous=str(before["state"]))
        current = await self._deliveries.find_one({"consumer": consumer, "event_id": event_id})
        if current is None or current["state"] in _FINISHED:
            return Claim("done")
        return Claim("busy")

    async def finish(
        self, consumer: str, event_id: str, state: Literal["sent", "suppressed"], detail: str = ""
    ) -> None:
        """Record the terminal state: a redelivered event is a no-op from now on."""
        now = datetime.now(UTC)
        await self._deliveries.update_one(
            {"consumer": consumer, "event_id": event_id},
            {"$set": {"state": state, "detail": detail, "updated_at": now, "finished_at": now}},
        )

    async def release(
        self,
        consumer: str,
        event_id: str,
        owner: str,
        state: Literal["retrying", "dead"],
        error: str,
    ) -> None:
        """Give the claim back so the next attempt (a retry, or a DLQ replay) can take it."""
        await self._deliveries.update_one(
            {"consumer": consumer, "event_id": event_id, "owner": owner, "state": "sending"},
            {"$set": {"state": state, "last_error": error[:500], "updated_at": datetime.now(UTC)}},
        )

    async def delivery(self, consumer: str, event_id: str) -> Doc | None:
        """The delivery record of an event (tests and the DLQ tool read it)."""
        return await self._deliveries.find_one({"consumer": consumer, "event_id": event_id})

    async def remember_recipient(self, user_id: str, email: str, name: str) -> None:
        """Keep the address that task reminders for this user go to."""
        await self._recipients.update_one(
            {"_id": user_id},
            {"$set": {"email": email, "name": name, "updated_at": datetime.now(UTC)}},
            upsert=True,
        )

    async def recipient(self, user_id: str) -> tuple[str, str] | None:
        """The (email, name) last seen for this user, if any."""
        doc = await self._recipients.find_one({"_id": user_id})
        return (str(doc["email"]), str(doc["name"])) if doc else None

    async def preferences(self, user_id: str) -> Preferences:
        """The user's preferences, defaults when never set."""
        doc = await self._preferences.find_one({"_id": user_id}, {"_id": 0, "updated_at": 0})
        return Preferences.model_validate(doc) if doc else Preferences()

    async def save_preferences(self, user_id: str, preferences: Preferences) -> None:
        """Replace the user's preferences."""
        await self._preferences.update_one(
            {"_id": user_id},
            {"$set": {**preferences.model_dump(), "updated_at": datetime.now(UTC)}},
            upsert=True,
        )

    async def take_send_slot(self, user_id: str, window: int, cap: int) -> bool:
        """Count one send in the user's current window; False when the cap is already reached.

        One document per user holds the current window, so nothing accumulates (no TTL indexes
        on FerretDB).
        """
        for _ in range(3):
            doc = await self._rates.find_one_and_update(
                {"_id": user_id, "window": window, "count": {"$lt": cap}},
                {"$inc": {"count": 1}},
                return_document=ReturnDocument.AFTER,
            )
            if doc is not None:
                return True
            if await self._rates.find_one({"_id": user_id, "window": window}) is not None:
                return False  # this window is full
            try:
                await self._rates.update_one(
                    {"_id": user_id, "window": {"$ne": window}},
                    {"$set": {"window": window, "count": 1}},
                    upsert=True,
                )
            except DuplicateKeyError:
                continue  # another worker opened the window first: count in it
            return True
        return False
