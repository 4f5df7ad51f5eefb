"""Clearing what the relay published: the one per-document rewrite, done behind publication.

FerretDB rewrites a document in ~10-18 ms at 1,300 documents (it finds each one again by scanning)
while inserts stay cheap, so a relay that cleared each batch before publishing the next was capped
at the database's rewrite rate, below the writers' insert rate (docs/bench-relay.md). The relay
therefore publishes first and hands what it published to `Cleared`, which clears in batches at
whatever pace the database allows; until then the relay remembers what went out and publishes it
no more (after a crash it may publish it again: delivery is at least once, deduplicated by id).

Per batch: under the writers' guards (`OutboxSource.guard`: on FerretDB an update is not isolated
from a concurrent one), one `update_many` clears and unmarks every document all of whose entries
went out (one `delete_many` for tombstones), a `$pullAll` only for documents partly published or
grown since read, and documents left marked with an empty outbox (a crash between a removal and
its unmark) are unmarked.
"""

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass

import structlog
from opentelemetry.instrumentation.utils import suppress_instrumentation

from common.leases import Leases
from common.outbox import OUTBOX, PENDING, Doc, OutboxSource

log = structlog.get_logger(__name__)
_RETRY_AFTER_S = 2.0
# How long one clearing call may hold the database: FerretDB serialises writes, so a longer
# call delays every writer's insert (at 10,000 documents a 100-document call took over 3 s).
_CALL_S = 0.5


@dataclass
class Sent:
    """What the relay published of one document: its outbox as read and the published prefix.

    `token` is the relay lease kept until the document is cleared (None: given up, or not yet
    taken); the rest never changes.
    """

    read: list[Doc]
    done: list[Doc]
    tomb: bool
    token: str | None

    @property
    def whole(self) -> bool:
        """Every entry read went out (or there was none): nothing left to publish."""
        return len(self.done) == len(self.read)

    def ids(self) -> set[str]:
        """The ids of the entries published."""
        return {str(item["id"]) for item in self.done}


@dataclass(frozen=True)
class Batch:
    """Documents to clear, by id."""

    sent: Mapping[str, Sent]

    def only(self, ids: set[str]) -> "Batch":
        """The part of the batch about `ids`."""
        return Batch({d: self.sent[d] for d in sorted(ids)})


class Clearing:
    """What the relay published and has not cleared yet, and the loop that clears it."""

    def __init__(self, sources: Mapping[str, OutboxSource], leases: Leases, batch: int) -> None:
        self._sources = sources
        self._leases = leases
        self._batch = batch
        self._size = batch  # documents per clearing call, adapted to its duration
        self._due = asyncio.Event()
        self.sent: dict[str, dict[str, Sent]] = {name: {} for name in sources}

    @property
    def uncleared(self) -> int:
        """Documents published but not cleared yet."""
        return sum(len(sent) for sent in self.sent.values())

    def notify(self) -> None:
        """Something was published: clear it soon."""
        self._due.set()

    async def forever(self) -> None:
        """Clear whenever notified, until cancelled; retry what is held back after a pause."""
        while True:
            await self._due.wait()
            self._due.clear()
            try:
                with suppress_instrumentation():
                    while await self.round():
                        raise_if_cancelled()
            except Exception:  # retried after a pause; the entries stay remembered meanwhile
                log.exception("outbox clearing failed")
            if self.uncleared:  # what the writers' guards or an error held back
                await asyncio.sleep(_RETRY_AFTER_S)
                self._due.set()

    async def round(self) -> int:
        """Clear one call's worth of remembered documents per source; how many were handled."""
        handled = 0
        for name, source in self._sources.items():
            sent = self.sent[name]
            picked = dict(list(sent.items())[: self._size])
            if not picked:
                continue
            held = await self._timed(source, Batch(picked))
            raise_if_cancelled()
            tokens: dict[str, str] = {}
            for doc_id in held:
                if sent.get(doc_id) is picked[doc_id]:  # not published again meanwhile
                    del sent[doc_id]
                    if (token := picked[doc_id].token) is not None:
                        tokens[doc_id] = token
            await self._leases.release_each(name, tokens)
            handled += len(held)
        return handled

    async def _timed(self, source: OutboxSource, batch: Batch) -> set[str]:
        """`clear`, halving the next call's size when one runs long or fails, else growing it."""
        clock = asyncio.get_running_loop().time
        began = clock()
        try:
            held = await clear(source, batch)
        except Exception:
            self._size = max(1, self._size // 2)
            raise
        took = clock() - began
        if took > _CALL_S:
            self._size = max(1, self._size // 2)
        elif took < _CALL_S / 2:
            self._size = min(self._batch, self._size * 2)
        return held


def raise_if_cancelled() -> None:
    """Honour a cancel that pymongo swallowed (seen in `update_many`: the task would never end)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _unchanged(doc_id: str, read: list[Doc]) -> Doc:
    """Matches the document while its outbox still is the (non-empty) one read."""
    return {"_id": doc_id, OUTBOX: {"$size": len(read)}, f"{OUTBOX}.0.id": read[0]["id"]}


async def clear(source: OutboxSource, batch: Batch) -> set[str]:
    """Remove exactly the published entries, unmark (or delete) emptied documents; ids handled."""
    if not batch.sent:
        return set()
    async with source.guard(sorted(batch.sent)) as held:
        # Documents not held keep their entries and are cleared on a later call.
        if held:
            await _clear(source, batch.only(held))
        return held


async def _clear(source: OutboxSource, batch: Batch) -> None:
    # Every call scans the collection even when it matches nothing (~0.1 s at 1,300
    # documents), so only the calls this batch needs are made.
    coll, sent = source.collection, batch.sent
    ids = list(sent)
    whole = [d for d in ids if sent[d].done and sent[d].whole]
    cleared = await _clear_whole(source, whole, batch)
    rest = [d for d in ids if sent[d].done and d not in whole]
    if cleared < len(whole):
        rest += whole  # some grew or shrank since read: which ones is not known, so all are asked
    if rest:
        # Event ids are unique, so one list removes each document's own entries only.
        items = [item for doc_id in rest for item in sent[doc_id].done]
        await coll.update_many({"_id": {"$in": rest}}, {"$pullAll": {OUTBOX: items}})
    if empty_ids := [d for d in ids if not sent[d].read]:
        # Marked with an empty outbox (a crash between a removal and its unmark) or none.
        none_left = [{OUTBOX: {"$size": 0}}, {OUTBOX: {"$exists": False}}]
        empty: Doc = {"_id": {"$in": empty_ids}, PENDING: True, "$or": none_left}
        if source.tombstone is not None:
            await coll.delete_many(empty | dict(source.tombstone))
        await coll.update_many(empty, {"$unset": {PENDING: ""}})


async def _clear_whole(source: OutboxSource, ids: list[str], batch: Batch) -> int:
    """Clear and unmark (or delete) documents all of whose entries went out; how many were."""
    count = 0
    tombs = [d for d in ids if batch.sent[d].tomb]
    for group in (tombs, [d for d in ids if not batch.sent[d].tomb]):
        if not group:
            continue
        # Unchanged since read means all of it went out: writers only append, and entries
        # leave only as a published prefix, so the same size and the same first entry
        # suffice. That holds even for a relay whose lease expired while it published.
        # The `_id` list first: a server that looks ids up by index evaluates the rest on those.
        where = {"_id": {"$in": group}, "$or": [_unchanged(d, batch.sent[d].read) for d in group]}
        if group is tombs:
            count += (await source.collection.delete_many(where)).deleted_count
        else:
            update = {"$set": {OUTBOX: []}, "$unset": {PENDING: ""}}
            count += (await source.collection.update_many(where, update)).modified_count
    return count
