"""Lock documents: mutual exclusion between replicas on a database without transactions.

A lock only spares contenders wasted work: every write it guards is still conditional on the
version it read, so a holder that stalls past the TTL and loses its lock cannot overwrite a newer
update (its write matches nothing and is retried).
"""

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import structlog
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from common.clock import Clock, utcnow
from common.leases import insert_free

log = structlog.get_logger(__name__)
Doc = dict[str, Any]


def write_key(task_id: str) -> str:
    """The lock every writer of a task document holds (the API, reminder claims, the relay)."""
    return f"w:{task_id}"


class DocLocks:
    """Mutual exclusion between processes via lock documents (a unique _id insert is atomic).

    A holder that dies leaves its lock until `expires_at`; then others may take it over, deleting
    it first. Locks nobody asks for again are removed by `sweep` (and so are the relay's leases,
    which live in the same collection).
    Within one process, contenders queue on an asyncio.Lock first, so at most one coroutine per
    process polls the database (SQLite has one writer: polling writes slow the holder down).
    """

    def __init__(
        self, coll: AsyncCollection[Doc], *, enabled: bool = True, clock: Clock = utcnow
    ) -> None:
        self._coll = self.collection = coll
        self.enabled = enabled
        self._clock = clock
        self._local: dict[str, tuple[asyncio.Lock, int]] = {}

    async def _try(self, key: str, token: str, ttl_s: float) -> bool:
        now = self._clock()
        try:
            await self._coll.insert_one(
                {"_id": key, "holder": token, "expires_at": now + timedelta(seconds=ttl_s)}
            )
        except DuplicateKeyError:
            current = await self._coll.find_one({"_id": key})
            if current is not None and current["expires_at"] < now:
                await self._coll.delete_one({"_id": key, "holder": current["holder"]})
            return False
        return True

    async def _in_db(self, key: str, token: str, ttl_s: float, deadline: float) -> bool:
        pause = 0.002
        while not await self._try(key, token, ttl_s):
            if time.monotonic() >= deadline:
                return False
            # Waiting on another process: jittered backoff, there is nothing to subscribe to.
            await asyncio.sleep(pause * random.uniform(0.5, 1.5))  # noqa: S311
            pause = min(pause * 2, 0.05)
        return True

    async def _local_lock(self, key: str, deadline: float) -> asyncio.Lock | None:
        lock, users = self._local.get(key) or (asyncio.Lock(), 0)
        self._local[key] = (lock, users + 1)
        remaining = deadline - time.monotonic()
        if not lock.locked():
            await lock.acquire()  # free: taken without yielding to the loop
            return lock
        if remaining > 0:
            try:
                await asyncio.wait_for(lock.acquire(), remaining)
            except TimeoutError:
                pass
            else:
                return lock
        self._forget(key)
        return None

    def _forget(self, key: str) -> None:
        lock, users = self._local[key]
        if users > 1:
            self._local[key] = (lock, users - 1)
        else:
            del self._local[key]

    @asynccontextmanager
    async def hold(
        self, key: str, *, ttl_s: float = 10.0, wait_s: float = 5.0
    ) -> AsyncIterator[bool]:
        """Hold `key` (yields True), or yield False if it stays taken for `wait_s`."""
        if not self.enabled:
            yield True
            return
        token, deadline = uuid.uuid4().hex, time.monotonic() + wait_s
        local = await self._local_lock(key, deadline)
        if local is None:
            yield False
            return
        try:
            held = await self._in_db(key, token, ttl_s, deadline)
            try:
                yield held
            finally:
                if held:
                    await self._coll.delete_one({"_id": key, "holder": token})
        finally:
            local.release()
            self._forget(key)

    @asynccontextmanager
    async def hold_many(
        self, keys: Sequence[str], *, ttl_s: float = 10.0, wait_s: float = 5.0
    ) -> AsyncIterator[set[str]]:
        """Hold as many of `keys` as can be had within `wait_s` (yields those held).

        One `insert_many` takes every free key and one `delete_many` releases them: a batch costs
        two writes, not two per key. Keys taken by someone else are waited for one by one. The
        in-process queue of `hold` is bypassed: the lock document alone decides.
        """
        if not self.enabled:
            yield set(keys)
            return
        token, deadline = uuid.uuid4().hex, time.monotonic() + wait_s
        held = await self._try_many(keys, token, ttl_s)
        busy = [key for key in keys if key not in held]
        if busy:
            got = await asyncio.gather(*(self._in_db(k, token, ttl_s, deadline) for k in busy))
            held |= {key for key, ok in zip(busy, got, strict=True) if ok}
        try:
            yield held
        finally:
            if held:
                await self._coll.delete_many({"_id": {"$in": sorted(held)}, "holder": token})

    async def _try_many(self, keys: Sequence[str], token: str, ttl_s: float) -> set[str]:
        expires = self._clock() + timedelta(seconds=ttl_s)
        locks = [{"_id": key, "holder": token, "expires_at": expires} for key in keys]
        inserted = await insert_free(self._coll, locks)
        return {key for n, key in enumerate(keys) if n in inserted}

    async def sweep(self, limit: int = 100) -> int:
        """Delete up to `limit` expired locks that nobody took over; how many went."""
        now = self._clock()
        expired = self._coll.find({"expires_at": {"$lt": now}}, {"holder": 1}).limit(limit)
        removed = 0
        async for doc in expired:
            # By holder too: a lock taken over since the find is someone's live lock.
            result = await self._coll.delete_one({"_id": doc["_id"], "holder": doc["holder"]})
            removed += result.deleted_count
        return removed

    async def sweep_forever(self, every_s: float = 60.0) -> None:
        """Sweep periodically until cancelled."""
        while True:
            try:
                await self.sweep()
            except Exception:  # the sweep outlives a bad round; it is logged
                log.exception("lock sweep failed")
            # A periodic schedule, not a wait on a condition.
            await asyncio.sleep(every_s)
