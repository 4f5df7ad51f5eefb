"""The notifier's own MongoDB data: delivery claims, the recipient directory, preferences, rates.

FerretDB 1.24 (SQLite) applies neither a conditional update nor `$inc` atomically (the auth service
measured concurrent compare-and-sets both succeeding). What it does enforce across processes is a
unique index on insert. So every decision two notifier replicas could race on is an insert:
the first claim of an event (unique (consumer, event_id)), each later takeover round (unique
(consumer, event_id, round) in `takeovers`), and each rate-limit slot (unique (user, window, slot)).
Updates only ever touch a document this process alone has won.

A delivery's `_id` is "<consumer>:<event_id>": FerretDB looks an `_id` up directly but scans the
collection for any other filter (measured: 1.75 ms against 29.5 ms per update at 1,000 documents,
growing with the ledger), and recording `sent` is the write a crash must not outrun. Records
written before this key (an ObjectId `_id`) are still found by (consumer, event_id) until the
retention prunes them.
"""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pymongo import ASCENDING
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from common.clock import Clock, utcnow
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

    def __init__(self, db: AsyncDatabase[Doc], clock: Clock = utcnow) -> None:
        # The clock is injected so a lease can be seen to run out without waiting for it.
        self._clock = clock
        self._deliveries = db["deliveries"]
        self._recipients = db["recipients"]
        self._preferences = db["preferences"]
        self._rates = db["rates"]
        self._takeovers = db["takeovers"]

    async def ensure_indexes(self) -> None:
        """The unique (consumer, event_id) index is what makes consumption idempotent."""
        await self._deliveries.create_index(
            [("consumer", ASCENDING), ("event_id", ASCENDING)],
            unique=True,
            name="consumer_event_unique",
        )
        await self._takeovers.create_index(
            [("consumer", ASCENDING), ("event_id", ASCENDING), ("round", ASCENDING)],
            unique=True,
            name="consumer_event_round_unique",
        )
        await self._rates.create_index(
            [("user_id", ASCENDING), ("window", ASCENDING), ("slot", ASCENDING)],
            unique=True,
            name="user_window_slot_unique",
        )

    async def claim(self, consumer: str, event_id: str, owner: str, lease_s: float) -> Claim:
        """Take the event for sending unless it is finished or another sender holds a live lease."""
        now = self._clock()
        lease_until = now + timedelta(seconds=lease_s)
        key = {"consumer": consumer, "event_id": event_id}
        claim = {"state": "sending", "owner": owner, "lease_until": lease_until, "updated_at": now}
        first = {"_id": _id(consumer, event_id), **key, **claim, "round": 1, "created_at": now}
        try:
            await self._deliveries.insert_one(first)
            return Claim("claimed", fresh=True)
        except DuplicateKeyError:
            pass
        current = await self.delivery(consumer, event_id)
        if current is None or current["state"] in _FINISHED:
            return Claim("done")
        live = current["state"] == "sending" and _aware(current["lease_until"]) >= now
        if live:
            return Claim("busy")
        # Released, dead-lettered, or its sender died: whoever inserts the next round owns it.
        round_ = int(current.get("round", 1)) + 1
        try:
            await self._takeovers.insert_one({**key, "round": round_, "owner": owner, "at": now})
        except DuplicateKeyError:
            return Claim("busy")
        await self._update(consumer, event_id, {}, {"$set": {**claim, "round": round_}})
        return Claim("claimed", previous=str(current["state"]))

    async def finish(
        self, consumer: str, event_id: str, state: Literal["sent", "suppressed"], detail: str = ""
    ) -> None:
        """Record the terminal state: a redelivered event is a no-op from now on."""
        now = self._clock()
        done = {"state": state, "detail": detail, "updated_at": now, "finished_at": now}
        await self._update(consumer, event_id, {}, {"$set": done})

    async def prune(self, finished_before: datetime) -> int:
        """Forget events finished before this time (no redelivery can be that old; no TTL index)."""
        old = {"state": {"$in": list(_FINISHED)}, "finished_at": {"$lt": finished_before}}
        result = await self._deliveries.delete_many(old)
        await self._takeovers.delete_many({"at": {"$lt": finished_before}})
        return result.deleted_count

    async def release(
        self,
        consumer: str,
        event_id: str,
        owner: str,
        state: Literal["retrying", "dead"],
        error: str,
    ) -> None:
        """Give the claim back so the next attempt (a retry, or a DLQ replay) can take it."""
        released = {"state": state, "last_error": error[:500], "updated_at": self._clock()}
        mine = {"owner": owner, "state": "sending"}
        await self._update(consumer, event_id, mine, {"$set": released})

    async def delivery(self, consumer: str, event_id: str) -> Doc | None:
        """The delivery record of an event."""
        found = await self._deliveries.find_one({"_id": _id(consumer, event_id)})
        if found is None:  # a record from before the `_id` key (scans on FerretDB)
            found = await self._deliveries.find_one({"consumer": consumer, "event_id": event_id})
        return found

    async def _update(self, consumer: str, event_id: str, also: Doc, update: Doc) -> None:
        """Update the event's delivery record by its `_id`, or by its fields if it predates it."""
        result = await self._deliveries.update_one({"_id": _id(consumer, event_id), **also}, update)
        if result.matched_count == 0:
            legacy = {"consumer": consumer, "event_id": event_id, **also}
            await self._deliveries.update_one(legacy, update)

    async def remember_recipient(self, user_id: str, email: str, name: str) -> None:
        """Keep the address that task reminders for this user go to."""
        await _upsert(self._recipients, user_id, {"email": email, "name": name})

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
        await _upsert(self._preferences, user_id, preferences.model_dump())

    async def take_send_slot(self, user_id: str, window: int, cap: int) -> bool:
        """Count one send in the user's current window; False when the cap is already reached.

        Slot documents are inserted, never incremented, so the cap holds across replicas.
        """
        used = await self._rates.count_documents({"user_id": user_id, "window": window})
        for slot in range(used, cap):
            try:
                await self._rates.insert_one({"user_id": user_id, "window": window, "slot": slot})
            except DuplicateKeyError:
                continue  # another sender took this slot first
            if slot == 0:  # first send of a window: drop the user's older windows
                await self._rates.delete_many({"user_id": user_id, "window": {"$lt": window}})
            return True
        return False


async def _upsert(collection: AsyncCollection[Doc], doc_id: str, fields: Doc) -> None:
    """Set fields on a document, creating it if needed (last writer wins)."""
    update = {"$set": {**fields, "updated_at": utcnow()}}
    try:
        await collection.update_one({"_id": doc_id}, update, upsert=True)
    except DuplicateKeyError:
        # A concurrent upsert created it first: now it exists, so a plain update applies.
        await collection.update_one({"_id": doc_id}, update)


def _id(consumer: str, event_id: str) -> str:
    return f"{consumer}:{event_id}"


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)
