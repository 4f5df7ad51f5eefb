"""In-process mutual exclusion per document: what keeps auth's FerretDB writes from interleaving.

FerretDB 1.24 (SQLite) does not apply a conditional update atomically: two concurrent
`update_one({"_id": x, "v": 0}, ...)` both succeed, and concurrent `$inc`s lose updates (measured
here: 20 of 30 and 23 of 30 races). MongoDB does apply them atomically. So every write to one
document goes through a lock in this process: with one auth replica on FerretDB, or any number on
MongoDB, compare-and-set and outbox pushes/removals cannot interleave. Unlike a lock document, it
guards nothing across processes.
"""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class ProcessLocks:
    """One asyncio lock per key being held; entries vanish when nobody holds them."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[bool]:
        """Serialise this process's writes under `key`; always held (yields True)."""
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield True
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)
