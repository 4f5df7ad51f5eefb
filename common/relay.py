"""The outbox relay: publishes what the `OutboxSource`s hold (common.outbox), in batches.

The relay works in batches: FerretDB rewrites a document in ~10 ms at 1,300 documents (it finds
each one again by scanning) and any query scans, so a per-document protocol (six writes per
event) capped it far below the writers' rate. Per batch of up to `batch` documents it makes a
fixed number of calls: a candidate query, one `insert_many` of leases (common.leases), one read
of the outboxes; publishes each document's entries in order up to its first failure (documents
in parallel); then, under the writers' guards for the whole batch (`OutboxSource.guard`: on
FerretDB an update is not isolated from a concurrent one), one `update_many` that clears and
unmarks every document all of whose entries went out (one `delete_many` for tombstones), a
`$pullAll` only for documents partly published or grown since read; one `delete_many` of leases.

A document left marked with an empty outbox (a crash between the removal and the unmark) is a
candidate like any other and is unmarked on the next visit. Delivery is at least once: consumers
deduplicate by event id.
"""

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta

import structlog
from opentelemetry.instrumentation.utils import suppress_instrumentation
from pydantic import ValidationError
from pymongo.asynchronous.collection import AsyncCollection

from common.clock import Clock, utcnow
from common.events import Envelope
from common.leases import Leases
from common.metrics import BacklogGauge
from common.outbox import OUTBOX, PENDING, Doc, OutboxSource

Publish = Callable[[str, Envelope], Awaitable[None]]
log = structlog.get_logger(__name__)
_RETRY_AFTER_ERROR_S = 2.0


@dataclass(frozen=True)
class Batch:
    """What one relay batch read and published, by document id."""

    read: Mapping[str, list[Doc]]
    done: Mapping[str, list[Doc]]
    tombs: set[str]

    def only(self, ids: set[str]) -> "Batch":
        """The part of the batch about `ids`."""
        pick = sorted(ids)
        return Batch(
            {d: self.read[d] for d in pick}, {d: self.done[d] for d in pick}, ids & self.tombs
        )


def _unchanged(doc_id: str, read: list[Doc]) -> Doc:
    """Matches the document while its outbox still is the (non-empty) one read."""
    return {"_id": doc_id, OUTBOX: {"$size": len(read)}, f"{OUTBOX}.0.id": read[0]["id"]}


def _raise_if_cancelled() -> None:
    """Honour a cancel that pymongo swallowed (seen in `update_many`: the task would never end)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class OutboxRelay:
    """Publishes the outboxes of several collections; one per service process."""

    def __init__(
        self,
        sources: Sequence[OutboxSource],
        publish: Publish,
        leases: AsyncCollection[Doc],
        *,
        service: str,
        now: Clock = utcnow,
        interval_s: float = 1.0,
        batch: int = 100,
        parallel: int = 16,
        lease_s: float = 30.0,
        backlog_every_s: float = 10.0,
        linger_s: float = 0.0,
    ) -> None:
        self._linger_s = linger_s
        self._sources = tuple(sources)
        self._publish = publish
        self._leases = Leases(leases, now, timedelta(seconds=lease_s))
        self._interval_s = interval_s
        self._batch = batch
        self._parallel = asyncio.Semaphore(parallel)
        self._wake = asyncio.Event()
        self._backlog = BacklogGauge(service, self._count_backlog, every_s=backlog_every_s)
        self._backlog_every_s = backlog_every_s
        self.backlog = 0  # the last count: writers read it without scanning (backpressure)

    def wake(self) -> None:
        """Relay now instead of at the next interval (a write just queued an event)."""
        self._wake.set()

    async def run(self) -> None:
        """Drain, then wait for `wake()` or the interval; until cancelled."""
        while True:
            self._wake.clear()
            timeout = self._interval_s
            try:
                await self.drain()
                _raise_if_cancelled()
            except Exception:  # the relay outlives a bad round; it is logged
                log.exception("outbox relay round failed")
                timeout = _RETRY_AFTER_ERROR_S
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancel that arrives
            # as the event is set, and the relay task then never ends (measured in the tests).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
                    # Like Kafka's linger.ms: writes arriving meanwhile join one batch, whose
                    # scans and clearing call are paid once instead of once per write.
                    await asyncio.sleep(self._linger_s)

    async def watch_backlog(self) -> None:
        """Keep `backlog` current even on a replica that leaves publishing to others."""
        while True:
            try:
                with suppress_instrumentation():
                    await self._backlog.refresh()
            except Exception:  # a database outage must not end the watch; it is logged
                log.exception("outbox backlog count failed")
            await asyncio.sleep(self._backlog_every_s)

    async def _count_backlog(self) -> int:
        self.backlog = await self.pending_events()
        return self.backlog

    async def drain(self) -> int:
        """Visit every pending document now; how many events were published."""
        published = 0
        # The relay's own reads, leases and removals would be a root trace per poll; each publish
        # still runs in the trace of the request that wrote the event (common.kafka.publish).
        with suppress_instrumentation():
            await self._backlog.refresh()
            for source in self._sources:
                published += await self._drain_source(source)
        return published

    async def _drain_source(self, source: OutboxSource) -> int:
        published = 0
        while True:
            ids = await self._candidates(source)
            moved = await self._relay_batch(source, ids) if ids else 0
            published += moved
            if len(ids) < self._batch or not moved:
                return published

    async def _candidates(self, source: OutboxSource) -> list[str]:
        """Up to `batch` marked documents nobody holds a lease on, in one query."""
        leased = await self._leases.held(source.name)
        where: Doc = {PENDING: True, "_id": {"$nin": leased}} if leased else {PENDING: True}
        found = source.collection.find(where, {"_id": 1}).limit(self._batch)
        return [doc["_id"] async for doc in found]

    async def _relay_batch(self, source: OutboxSource, ids: list[str]) -> int:
        """Publish the outboxes of the documents whose leases it gets; how many events went out."""
        token, taken = await self._leases.take(source.name, ids)
        keep: set[str] = set()
        try:
            found = source.collection.find({"_id": {"$in": taken}}, source.projection())
            docs = [doc async for doc in found]
            outboxes = {doc["_id"]: list(doc.get(OUTBOX, [])) for doc in docs}
            tombs = {doc["_id"] for doc in docs if source.is_tombstone(doc)}
            results = await asyncio.gather(
                *(self._publish_doc(source, doc_id, items) for doc_id, items in outboxes.items())
            )
            done = {doc_id: sent for doc_id, (sent, _) in zip(outboxes, results, strict=True)}
            keep = {doc_id for doc_id, (_, bad) in zip(outboxes, results, strict=True) if bad}
            await self._clean(source, Batch(outboxes, done, tombs))
            return sum(len(sent) for sent in done.values())
        finally:
            await self._leases.release(source.name, [d for d in taken if d not in keep], token)

    async def _publish_doc(
        self, source: OutboxSource, doc_id: str, entries: list[Doc]
    ) -> tuple[list[Doc], bool]:
        async with self._parallel:
            return await self._publish_in_order(source, doc_id, entries)

    async def _publish_in_order(
        self, source: OutboxSource, doc_id: str, entries: list[Doc]
    ) -> tuple[list[Doc], bool]:
        """The entries published, oldest first, up to the first failure; True if one is malformed.

        A malformed entry keeps the document's lease until it expires, so it is retried at that
        pace rather than in a hot loop; a failed publish releases it for a prompt retry.
        """
        done: list[Doc] = []
        for item in entries:
            try:
                envelope = Envelope.model_validate(item["event"])
                topic = str(item["topic"])
            except (ValidationError, KeyError, TypeError):
                log.exception("undeliverable outbox entry", source=source.name, doc=doc_id)
                return done, True
            try:
                await self._publish(topic, envelope)
            except Exception:  # any failure: keep the entry, retry later
                # Later entries wait: order per document matters more than progress.
                log.exception("outbox publish failed", source=source.name, event_id=envelope.id)
                return done, False
            done.append(item)
        return done, False

    async def _clean(self, source: OutboxSource, batch: Batch) -> None:
        """Remove exactly the published entries; unmark (or delete) the documents left empty."""
        if not batch.done:
            return
        async with source.guard(sorted(batch.done)) as held:
            # Documents not held keep their entries, published again later: duplicates, no loss.
            if held:
                await self._clear(source, batch.only(held))

    async def _clear(self, source: OutboxSource, batch: Batch) -> None:
        # Every call scans the collection even when it matches nothing (~0.1 s at 1,300
        # documents), so only the calls this batch needs are made.
        coll, read, done = source.collection, batch.read, batch.done
        ids = sorted(done)
        whole = [d for d in ids if done[d] and len(done[d]) == len(read[d])]
        cleared = await self._clear_whole(source, whole, batch)
        rest = [d for d in ids if done[d] and d not in whole]
        if cleared < len(whole):
            rest += whole  # some grew since read: which ones is not known, so all are asked
        if rest:
            # Event ids are unique, so one list removes each document's own entries only.
            sent = [item for doc_id in rest for item in done[doc_id]]
            await coll.update_many({"_id": {"$in": rest}}, {"$pullAll": {OUTBOX: sent}})
        if empty_ids := [d for d in ids if not read[d]]:
            # Marked with an empty outbox (a crash between a removal and its unmark) or none.
            none_left = [{OUTBOX: {"$size": 0}}, {OUTBOX: {"$exists": False}}]
            empty: Doc = {"_id": {"$in": empty_ids}, PENDING: True, "$or": none_left}
            if source.tombstone is not None:
                await coll.delete_many(empty | dict(source.tombstone))
            await coll.update_many(empty, {"$unset": {PENDING: ""}})

    async def _clear_whole(self, source: OutboxSource, ids: list[str], batch: Batch) -> int:
        """Clear and unmark (or delete) documents all of whose entries went out; how many were."""
        count = 0
        for group in (
            [d for d in ids if d in batch.tombs],
            [d for d in ids if d not in batch.tombs],
        ):
            if not group:
                continue
            # Unchanged since read means all of it went out: writers only append, and entries
            # leave only as a published prefix, so the same size and the same first entry
            # suffice. That holds even for a relay whose lease expired while it published.
            ors = [_unchanged(doc_id, batch.read[doc_id]) for doc_id in group]
            if group[0] in batch.tombs:
                count += (await source.collection.delete_many({"$or": ors})).deleted_count
            else:
                update = {"$set": {OUTBOX: []}, "$unset": {PENDING: ""}}
                count += (await source.collection.update_many({"$or": ors}, update)).modified_count
        return count

    async def pending_events(self) -> int:
        """How many events wait in every source's outboxes (the backlog gauge, tests)."""
        total = 0
        for source in self._sources:
            async for doc in source.collection.find({PENDING: True}, {OUTBOX: 1}):
                total += len(doc.get(OUTBOX, []))
        return total
