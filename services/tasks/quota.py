"""A per-user cap on stored tasks, kept without a database scan or an extra write per create.

FerretDB uses no index, so counting a user's tasks scans the whole collection: the count is
taken rarely. Each process remembers, per user, the live count it last read and the creates it
admitted since. It counts again after `recount_every` admitted creates, and, once the estimate
reaches the cap, at most every `full_recheck_s` (so deleting tasks frees room within that time).
Until then creates are admitted or refused on the estimate.

Bounded overshoot: a process admits at most `recount_every` creates between two counts, so a
user can store at most cap + replicas x recount_every tasks (an entry evicted from the bounded
table, or a restart, starts a new run of at most `recount_every`).
"""

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from cachetools import LRUCache

from services.tasks.domain import TaskError


class TaskQuotaExceededError(TaskError):
    """The owner already stores as many tasks as the cap allows."""


@dataclass
class _Tally:
    counted: int  # live tasks at the last count
    since: int  # creates admitted by this process since that count
    counted_at: float


class TaskQuota:
    """Admits a create unless the owner's estimated task count has reached the cap."""

    def __init__(
        self,
        count: Callable[[str], Awaitable[int]],
        *,
        max_tasks: int,
        recount_every: int = 100,
        full_recheck_s: float = 10.0,
        owners: int = 100_000,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._count = count
        self._max = max_tasks
        self._every = recount_every
        self._recheck_s = full_recheck_s
        self._tallies: LRUCache[str, _Tally] = LRUCache(maxsize=owners)
        self._now = monotonic

    async def admit(self, owner: str) -> None:
        """Count one create against the owner; TaskQuotaExceededError when over the cap."""
        tally = self._tallies.get(owner)
        if tally is None:
            # Unknown here: start a run without counting; the count comes `recount_every` later.
            tally = self._tallies[owner] = _Tally(0, 0, self._now())
        full = tally.counted + tally.since >= self._max
        stale = full and self._now() - tally.counted_at >= self._recheck_s
        if tally.since >= self._every or stale:
            await self._recount(owner, tally)
            full = tally.counted + tally.since >= self._max
        if full:
            raise TaskQuotaExceededError(f"{owner} stores {self._max} tasks already")
        tally.since += 1

    async def _recount(self, owner: str, tally: _Tally) -> None:
        before = tally.since
        counted = await self._count(owner)
        # Creates admitted while the count ran may or may not be in it: keep them (overcount).
        tally.counted, tally.since, tally.counted_at = counted, tally.since - before, self._now()
