"""The outbox relay: publishes what the `OutboxSource`s (common.outbox) hold, then clears it.

Three loops, so none waits for another's database calls. Writers name the document they wrote
(`wrote`): it is published without a scan, and a just-inserted document's outbox, which its
writer knows, without reading it back. A sweep (every `interval_s`, or on `wake()`) scans the
marked documents once, for what other replicas or a crash left behind and to count the backlog.
What went out is remembered per document (`Sent`) and cleared behind by common.relay_clear, at
the database's pace: its slow per-document rewrite no longer caps the publish rate, and a
remembered entry is not published again.

Publishing a batch of up to `batch` documents takes one `insert_many` of leases (common.leases)
and one read of the outboxes; each document's entries go out in order up to its first failure
(documents in parallel). Delivery is at least once: consumers deduplicate by event id.
"""

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any

import structlog
from opentelemetry.instrumentation.utils import suppress_instrumentation
from pydantic import ValidationError
from pymongo.asynchronous.collection import AsyncCollection

from common.clock import Clock, utcnow
from common.events import Envelope
from common.leases import Leases
from common.metrics import BacklogGauge
from common.outbox import OUTBOX, PENDING, Doc, OutboxSource
from common.relay_clear import Clearing, Sent, raise_if_cancelled

Publish = Callable[[str, Envelope], Awaitable[None]]
log = structlog.get_logger(__name__)
_RETRY_AFTER_ERROR_S = 2.0


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
    ) -> None:
        self._sources = {source.name: source for source in sources}
        self._publish = publish
        self._leases = Leases(leases, now, timedelta(seconds=lease_s))
        self._interval_s = interval_s
        self._batch = batch
        self._parallel = asyncio.Semaphore(parallel)
        self._wake = asyncio.Event()  # a writer named a document
        self._sweep_now = asyncio.Event()
        # Documents writers named, with their whole outbox when the writer knows it (an insert).
        self._named: dict[str, dict[str, list[Doc] | None]] = {name: {} for name in self._sources}
        self._clearing = Clearing(self._sources, self._leases, batch)
        self._sent = self._clearing.sent  # what went out, per source and document
        self._backlog = BacklogGauge(service, self._count_backlog, every_s=backlog_every_s)
        self._backlog_every_s = backlog_every_s
        self.backlog = 0  # the last count: writers read it without scanning (backpressure)

    @property
    def uncleared(self) -> int:
        """Documents published but not cleared yet (backpressure on the database's rewrites)."""
        return self._clearing.uncleared

    def wake(self) -> None:
        """Sweep every source now instead of at the next interval."""
        self._sweep_now.set()

    def wrote(
        self, source: str, doc_id: str, outbox: Sequence[Mapping[str, Any]] | None = None
    ) -> None:
        """A writer just added events to this document: publish it now, without a sweep.

        `outbox` is the document's whole outbox when the writer knows it (it just inserted the
        document): then it is published without reading the document back.
        """
        named = self._named[source]
        known = outbox is not None and doc_id not in named  # named twice: read it back
        named[doc_id] = [dict(item) for item in outbox or ()] if known else None
        self._wake.set()

    async def run(self) -> None:
        """Publish what writers name, sweep, and clear, until cancelled.

        Three loops, so a named document never waits for a sweep's scan (at 10,000 documents
        that made a create's event wait 216 ms) nor for a clearing call.
        """
        async with asyncio.TaskGroup() as group:
            group.create_task(self._forever(self._wake, None, self._publish_named, "publish"))
            group.create_task(
                self._forever(self._sweep_now, self._interval_s, self._sweep_all, "sweep")
            )
            group.create_task(self._clearing.forever())

    async def _forever(
        self,
        event: asyncio.Event,
        every_s: float | None,
        step: Callable[[], Awaitable[int]],
        what: str,
    ) -> None:
        """Run `step` now, then whenever `event` is set (or `every_s` passed)."""
        while True:
            event.clear()
            pause = every_s
            try:
                with suppress_instrumentation():
                    await step()
                raise_if_cancelled()
            except Exception:  # the relay outlives a bad round; it is logged
                log.exception("outbox relay round failed", step=what)
                pause = _RETRY_AFTER_ERROR_S
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancel that arrives
            # as the event is set, and the relay task then never ends (measured in the tests).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause):
                    await event.wait()

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
        """Publish every pending document now and clear it; how many events were published."""
        # The relay's own reads, leases and removals would be a root trace per poll; each publish
        # still runs in the trace of the request that wrote the event (common.kafka.publish).
        with suppress_instrumentation():
            published = await self._publish_round()
            while await self._clearing.round():
                pass
            await self._backlog.refresh()
        return published

    async def _publish_round(self) -> int:
        """Publish the documents writers named, then sweep; events published."""
        return await self._publish_named() + await self._sweep_all()

    async def _publish_named(self) -> int:
        """Publish the documents writers named since the last round; events published."""
        published = 0
        for name, source in self._sources.items():
            named, self._named[name] = self._named[name], {}
            known = {d: outbox for d, outbox in named.items() if outbox is not None}
            unknown = sorted(d for d in named if d not in known)
            for start in range(0, len(unknown), self._batch):
                published += await self._publish_batch(source, unknown[start : start + self._batch])
            if known:
                published += await self._publish_known(source, known)
        return published

    async def _sweep_all(self) -> int:
        """Sweep every source; the scan also counts the backlog (no second scan for it)."""
        published = waiting = 0
        for source in self._sources.values():
            moved, left = await self._sweep(source)
            published, waiting = published + moved, waiting + left
        self.backlog = waiting
        self._backlog.observed(waiting)
        return published

    async def _sweep(self, source: OutboxSource) -> tuple[int, int]:
        """One scan of the marked documents: publish those nobody leases; (published, left).

        A remembered document another replica wrote to meanwhile is found again once it is
        cleared or its lease expires (`lease_s`): its writer's own relay could not lease it.
        """
        leased = set(await self._leases.held(source.name))
        sent = self._sent[source.name]
        waiting, found = 0, []
        async for doc in source.collection.find({PENDING: True}, {OUTBOX: 1}):
            new = _unpublished(doc, sent.get(doc["_id"]))
            waiting += new
            if doc["_id"] not in leased and (new or not doc.get(OUTBOX)):
                found.append(doc["_id"])  # events to publish, or marked with none (repair)
        published = 0
        for start in range(0, len(found), self._batch):
            published += await self._publish_batch(source, found[start : start + self._batch])
        return published, max(0, waiting - published)

    async def _publish_known(self, source: OutboxSource, known: Mapping[str, list[Doc]]) -> int:
        """Publish just-inserted documents from their writers' outboxes, then lease them.

        No read and no lease before the publish: a create's event goes out after one Kafka round
        trip. The lease taken afterwards holds other relays' sweeps off until the document is
        cleared; one that found it first publishes it again (at least once).
        """
        sent = self._sent[source.name]
        docs = {d: {"_id": d, OUTBOX: outbox} for d, outbox in known.items() if d not in sent}
        outcomes = await asyncio.gather(
            *(self._publish_doc(source, doc_id, doc, None) for doc_id, doc in docs.items())
        )
        token, taken = await self._leases.take(source.name, [d for d in docs if d in sent])
        for doc_id in taken:
            sent[doc_id].token = token
        self._clearing.notify()
        return sum(count for count, _ in outcomes)

    async def _publish_batch(self, source: OutboxSource, ids: list[str]) -> int:
        """Publish the outboxes of `ids` this relay leases; how many events went out."""
        sent = self._sent[source.name]
        # A document still remembered keeps the lease taken when it was published.
        kept = {d: t for d in ids if d in sent and (t := sent[d].token) is not None}
        token, taken = await self._leases.take(source.name, [d for d in ids if d not in kept])
        owned = {**kept, **dict.fromkeys(taken, token)}
        found = source.collection.find({"_id": {"$in": sorted(owned)}}, source.projection())
        docs = {doc["_id"]: doc async for doc in found}
        outcomes = await asyncio.gather(
            *(self._publish_doc(source, doc_id, doc, owned[doc_id]) for doc_id, doc in docs.items())
        )
        # Let go of documents gone meanwhile and of those to retry promptly (a failed publish).
        let_go = [d for d in owned if d not in docs]
        let_go += [d for d, (_, release) in zip(docs, outcomes, strict=True) if release]
        await self._leases.release_each(source.name, {d: owned[d] for d in let_go})
        self._clearing.notify()
        return sum(count for count, _ in outcomes)

    async def _publish_doc(
        self, source: OutboxSource, doc_id: str, doc: Doc, token: str | None
    ) -> tuple[int, bool]:
        """Publish one document's new entries and remember them: (how many, let go of it now).

        A wholly published document keeps its lease until cleared, so no other relay publishes
        it again. A malformed entry keeps the lease until it expires, so it is retried at that
        pace rather than in a hot loop; a failed publish lets it go for a prompt retry.
        """
        entries = list(doc.get(OUTBOX, []))
        before = self._sent[source.name].get(doc_id)
        known = before.ids() if before is not None else set()
        async with self._parallel:
            done, malformed = await self._publish_in_order(source, doc_id, entries, known)
        release = len(done) < len(entries) and not malformed
        if done or not entries:
            tomb = source.is_tombstone(doc)
            self._sent[source.name][doc_id] = Sent(entries, done, tomb, None if release else token)
        return sum(1 for item in done if item["id"] not in known), release

    async def _publish_in_order(
        self, source: OutboxSource, doc_id: str, entries: list[Doc], known: set[str]
    ) -> tuple[list[Doc], bool]:
        """The entries out (published now or before), oldest first, to the first failure."""
        done: list[Doc] = []
        for item in entries:
            if item.get("id") in known:
                done.append(item)
                continue
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

    async def pending_events(self) -> int:
        """How many events wait in every source's outboxes, not yet published (backlog gauge)."""
        total = 0
        for name, source in self._sources.items():
            sent = self._sent[name]
            async for doc in source.collection.find({PENDING: True}, {OUTBOX: 1}):
                total += _unpublished(doc, sent.get(doc["_id"]))
        return total


def _unpublished(doc: Doc, sent: Sent | None) -> int:
    """How many entries of a document read with its outbox this relay has not published."""
    known = sent.ids() if sent is not None else set()
    return sum(1 for item in doc.get(OUTBOX, []) if item.get("id") not in known)
