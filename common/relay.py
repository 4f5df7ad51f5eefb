"""The outbox relay: publishes what the `OutboxSource`s (common.outbox) hold, then clears it.

Publication and clearing are two loops. Publishing a batch of up to `batch` documents makes a
fixed number of calls: (for a sweep) a candidate query, one `insert_many` of leases
(common.leases), one read of the outboxes; then each document's entries go out in order up to its
first failure (documents in parallel). What went out is remembered per document (`Sent`) and
cleared behind, in batches, by common.relay_clear: the database's slow per-document rewrite no
longer caps the publish rate, and a remembered entry is not published again.

Writers tell the relay which document they wrote (`wrote`): those are published without a scan,
and a just-inserted document's outbox, which its writer knows, without reading it back.
A sweep (every `interval_s`, or on `wake()`) finds what other replicas or a crash left behind.
Delivery is at least once: consumers deduplicate by event id.
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
from common.relay_clear import Batch, Sent, clear

Publish = Callable[[str, Envelope], Awaitable[None]]
log = structlog.get_logger(__name__)
_RETRY_AFTER_ERROR_S = 2.0
# How long one clearing call may hold the database: FerretDB serialises writes, so a longer
# call delays every writer's insert (at 10,000 documents a 100-document call took over 3 s).
_CLEAR_CALL_S = 0.5


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
    ) -> None:
        self._sources = {source.name: source for source in sources}
        self._publish = publish
        self._leases = Leases(leases, now, timedelta(seconds=lease_s))
        self._interval_s = interval_s
        self._batch = batch
        self._parallel = asyncio.Semaphore(parallel)
        self._wake = asyncio.Event()
        self._sweep_due = True
        # Documents writers named, with their whole outbox when the writer knows it (an insert).
        self._named: dict[str, dict[str, list[Doc] | None]] = {name: {} for name in self._sources}
        self._sent: dict[str, dict[str, Sent]] = {name: {} for name in self._sources}
        self._to_clear = asyncio.Event()
        self._clear_size = batch  # documents per clearing call, adapted to its duration
        self._backlog = BacklogGauge(service, self._count_backlog, every_s=backlog_every_s)
        self._backlog_every_s = backlog_every_s
        self.backlog = 0  # the last count: writers read it without scanning (backpressure)

    @property
    def uncleared(self) -> int:
        """Documents published but not cleared yet (backpressure on the database's rewrites)."""
        return sum(len(sent) for sent in self._sent.values())

    def wake(self) -> None:
        """Sweep every source now instead of at the next interval."""
        self._sweep_due = True
        self._wake.set()

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
        """Publish and clear until cancelled."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._publish_forever())
            group.create_task(self._clear_forever())

    async def _publish_forever(self) -> None:
        clock = asyncio.get_running_loop().time
        next_sweep = clock()
        while True:
            self._wake.clear()
            if clock() >= next_sweep:
                self._sweep_due, next_sweep = True, clock() + self._interval_s
            timeout = max(0.0, next_sweep - clock())
            try:
                with suppress_instrumentation():
                    await self._publish_round()
                _raise_if_cancelled()
            except Exception:  # the relay outlives a bad round; it is logged
                log.exception("outbox relay round failed")
                timeout = _RETRY_AFTER_ERROR_S
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancel that arrives
            # as the event is set, and the relay task then never ends (measured in the tests).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()

    async def _clear_forever(self) -> None:
        while True:
            await self._to_clear.wait()
            self._to_clear.clear()
            try:
                with suppress_instrumentation():
                    while await self._clear_round():
                        _raise_if_cancelled()
            except Exception:  # retried after a pause; the entries stay remembered meanwhile
                log.exception("outbox clearing failed")
            if self.uncleared:  # what the writers' guards or an error held back: retry soon
                await asyncio.sleep(_RETRY_AFTER_ERROR_S)
                self._to_clear.set()

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
            self._sweep_due = True
            published = await self._publish_round()
            while await self._clear_round():
                pass
            await self._backlog.refresh()
        return published

    async def _publish_round(self) -> int:
        """Publish the documents writers named, then (when due) sweep; events published."""
        sweep, self._sweep_due = self._sweep_due, False
        published = 0
        for name, source in self._sources.items():
            named, self._named[name] = self._named[name], {}
            known = {d: outbox for d, outbox in named.items() if outbox is not None}
            unknown = sorted(d for d in named if d not in known)
            for start in range(0, len(unknown), self._batch):
                published += await self._publish_batch(source, unknown[start : start + self._batch])
            if known:
                published += await self._publish_known(source, known)
            if sweep:
                published += await self._sweep(source)
        return published

    async def _sweep(self, source: OutboxSource) -> int:
        published = 0
        while True:
            ids = await self._candidates(source)
            moved = await self._publish_batch(source, ids) if ids else 0
            published += moved
            if len(ids) < self._batch or not moved:
                return published

    async def _candidates(self, source: OutboxSource) -> list[str]:
        """Up to `batch` marked documents not leased and not wholly published, in one query.

        A remembered document another replica wrote to meanwhile is found again once it is
        cleared or its lease expires (`lease_s`): its writer's own relay could not lease it.
        """
        sent = self._sent[source.name]
        skip = set(await self._leases.held(source.name)) | {d for d, s in sent.items() if s.whole}
        where: Doc = {PENDING: True, "_id": {"$nin": sorted(skip)}} if skip else {PENDING: True}
        found = source.collection.find(where, {"_id": 1}).limit(self._batch)
        return [doc["_id"] async for doc in found]

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
        self._to_clear.set()
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
        await self._release(source.name, {d: owned[d] for d in let_go})
        self._to_clear.set()
        return sum(count for count, _ in outcomes)

    async def _release(self, source: str, tokens: dict[str, str]) -> None:
        by_token: dict[str, list[str]] = {}
        for doc_id, token in tokens.items():
            by_token.setdefault(token, []).append(doc_id)
        for token, doc_ids in by_token.items():
            await self._leases.release(source, doc_ids, token)

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

    async def _clear_round(self) -> int:
        """Clear up to `batch` remembered documents per source; how many were handled."""
        handled = 0
        for name, source in self._sources.items():
            sent = self._sent[name]
            picked = dict(list(sent.items())[: self._clear_size])
            if not picked:
                continue
            held = await self._timed_clear(source, Batch(picked))
            _raise_if_cancelled()
            tokens: dict[str, str] = {}
            for doc_id in held:
                if sent.get(doc_id) is picked[doc_id]:  # not published again meanwhile
                    del sent[doc_id]
                    if (token := picked[doc_id].token) is not None:
                        tokens[doc_id] = token
            await self._release(name, tokens)
            handled += len(held)
        return handled

    async def _timed_clear(self, source: OutboxSource, batch: Batch) -> set[str]:
        """`clear`, halving the next call's size when one runs long or fails, else growing it."""
        clock = asyncio.get_running_loop().time
        began = clock()
        try:
            held = await clear(source, batch)
        except Exception:
            self._clear_size = max(1, self._clear_size // 2)
            raise
        took = clock() - began
        if took > _CLEAR_CALL_S:
            self._clear_size = max(1, self._clear_size // 2)
        elif took < _CLEAR_CALL_S / 2:
            self._clear_size = min(self._batch, self._clear_size * 2)
        return held

    async def pending_events(self) -> int:
        """How many events wait in every source's outboxes, not yet published (backlog gauge)."""
        total = 0
        for name, source in self._sources.items():
            sent = self._sent[name]
            async for doc in source.collection.find({PENDING: True}, {OUTBOX: 1}):
                known = sent[doc["_id"]].ids() if doc["_id"] in sent else set()
                total += sum(1 for item in doc.get(OUTBOX, []) if item.get("id") not in known)
        return total
