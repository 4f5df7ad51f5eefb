"""What the tasks service remembers of commands and users for the command topics (MongoDB).

- `CommandLedger`: one document per command answered without a task write (a rejection, or an
  update that changed nothing), `_id` "<producer>:<command id>", carrying its answer in an outbox
  (common.outbox) so the answer is as reliable as the domain events. The unique `_id` insert is
  atomic on FerretDB too: a redelivered command finds its document and is not answered twice.
  Commands that changed a task are remembered by the task itself (storage.py).
- `UserDirectory`: the ids of the accounts that exist, fed from `user.registered.v1` on the users
  topic (services/tasks/command_feed.py); a command for any other user is refused.
"""

import asyncio
import contextlib
from datetime import datetime
from typing import Any

from cachetools import LRUCache
from pymongo import WriteConcern
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from common.clock import Clock, utcnow
from common.leases import insert_free
from common.outbox import PENDING, OutboxEntry, with_entries

Doc = dict[str, Any]


class CommandLedger:
    """The commands answered without a task write, each with its answer in an outbox."""

    def __init__(self, db: AsyncDatabase[Doc], clock: Clock = utcnow) -> None:
        majority = WriteConcern(w="majority")
        self.collection: AsyncCollection[Doc] = db.get_collection(
            "commands", write_concern=majority
        )
        self._clock = clock

    async def seen(self, command: str) -> bool:
        """Whether this command was answered already (a lookup by `_id`)."""
        return await self.collection.find_one({"_id": command}, {"_id": 1}) is not None

    async def answer(self, command: str, outcome: str, answer: OutboxEntry) -> bool:
        """Record the command with its answer; False if it was recorded before (no second one)."""
        doc = {"_id": command, "outcome": outcome, "at": self._clock()}
        try:
            await self.collection.insert_one(with_entries(doc, answer))
        except DuplicateKeyError:
            return False
        return True

    async def prune(self, before: datetime) -> int:
        """Forget commands answered before `before` whose answer went out; how many.

        A scan on FerretDB: run rarely. `before` must lie past the command topics' retention, so
        no redelivery can outlive its entry.
        """
        done = {"at": {"$lt": before}, PENDING: {"$ne": True}}
        return int((await self.collection.delete_many(done)).deleted_count)


class UserDirectory:
    """The user ids the users topic announced; positives are cached (accounts are not deleted).

    A command may arrive before the registration of its user was read here (a CRM acting right
    after sign-up): `known_by` waits, a bounded time, until the feed has read the users topic up
    to the command's own timestamp before it calls a user unknown.
    """

    def __init__(self, db: AsyncDatabase[Doc], cached: int = 100_000) -> None:
        majority = WriteConcern(w="majority")
        self.collection: AsyncCollection[Doc] = db.get_collection("users", write_concern=majority)
        self._known: LRUCache[str, bool] = LRUCache(maxsize=cached)
        self.read_up_to_ms = 0  # the feed has read every user registered before this (epoch ms)
        self._progress = asyncio.Condition()

    async def caught_up(self, since_ms: int) -> None:
        """The feed read the topic to its end as it was at `since_ms`."""
        async with self._progress:
            self.read_up_to_ms = max(self.read_up_to_ms, since_ms)
            self._progress.notify_all()

    async def known_by(self, user_id: str, at_ms: int, within_s: float) -> bool:
        """Whether the user exists, once the feed has read past `at_ms` (or `within_s` passed)."""
        if await self.known(user_id):
            return True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within_s), self._progress:
                await self._progress.wait_for(lambda: self.read_up_to_ms >= at_ms)
        return await self.known(user_id)

    async def add(self, user_ids: list[str]) -> None:
        """Remember these users (idempotent: a user seen before is left as it is)."""
        fresh = list(dict.fromkeys(u for u in user_ids if u not in self._known))
        await insert_free(self.collection, [{"_id": u} for u in fresh])
        for user_id in fresh:
            self._known[user_id] = True

    async def known(self, user_id: str) -> bool:
        """Whether an account with this id exists (as far as the users topic has told)."""
        if user_id in self._known:
            return True
        found = await self.collection.find_one({"_id": user_id}, {"_id": 1}) is not None
        if found:
            self._known[user_id] = True
        return found
