"""The transactional outbox: events ride in the document they describe, a relay publishes them.

FerretDB has no multi-document transactions, so an event is written in the same single-document
write as the change it reports, onto the owning document's `outbox` array, and the document is
marked `outbox_pending`:

- `entry(topic, envelope)` builds the array element ({"id", "topic", "event"}, the envelope as a
  JSON-compatible dict);
- `push(update, *entries)` adds the entries and the mark to an update document,
  `with_entries(doc, *entries)` to a document about to be inserted;
- `OutboxRelay(sources, publish, leases, service=...)` publishes what the `OutboxSource`s (one per
  collection) hold: call `wake()` after a write, run `run()` as a background task (it also polls
  every `interval_s` for what a crash left behind).

Per document the relay takes a lease (a lock document in `leases`: a unique `_id` insert is
atomic on FerretDB too), so two replicas never publish one document's events concurrently; it
publishes the entries in order, stops at the first failure, removes exactly the entries published
(`$pullAll` of the values read) and unmarks the document once its outbox is empty, or deletes it
if it matches the source's tombstone filter. A document left marked with an empty outbox (a crash
between the removal and the unmark) is a candidate like any other and is unmarked on the next
visit. Delivery is at least once: consumers deduplicate by event id.

On FerretDB an update is not isolated from a concurrent one to the same document, so the relay's
removal takes the writers' per-document guard (`OutboxSource.guard`) when the service has one.
"""

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypedDict

import structlog
from opentelemetry.instrumentation.utils import suppress_instrumentation
from pydantic import ValidationError
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from common.clock import Clock, utcnow
from common.events import Envelope
from common.metrics import BacklogGauge

Doc = dict[str, Any]
OUTBOX = "outbox"
PENDING = "outbox_pending"
Publish = Callable[[str, Envelope], Awaitable[None]]
Guard = Callable[[str], AbstractAsyncContextManager[bool]]
log = structlog.get_logger(__name__)
_RETRY_AFTER_ERROR_S = 2.0


class OutboxEntry(TypedDict):
    """One element of a document's outbox array."""

    id: str
    topic: str
    event: dict[str, Any]


def entry(topic: str, envelope: Envelope) -> OutboxEntry:
    """The outbox element that publishes `envelope` on the (logical) `topic`."""
    return {"id": envelope.id, "topic": topic, "event": envelope.model_dump(mode="json")}


def push(update: Doc, *entries: OutboxEntry) -> Doc:
    """Add the entries and the pending mark to an update document (returned, changed in place)."""
    update.setdefault("$set", {})[PENDING] = True
    values = list(entries)
    update["$push"] = {OUTBOX: values[0] if len(values) == 1 else {"$each": values}}
    return update


def with_entries(doc: Doc, *entries: OutboxEntry) -> Doc:
    """A document to insert, carrying the entries and the pending mark."""
    return {**doc, OUTBOX: list(entries), PENDING: True}


@contextlib.asynccontextmanager
async def _unguarded(_: str) -> AsyncIterator[bool]:
    yield True


@dataclass(frozen=True)
class OutboxSource:
    """A collection whose documents carry outboxes.

    `guard(doc_id)` serialises the relay's removal with the service's writers of that document
    (yields False when it cannot be had: the removal waits for the next visit). `tombstone`
    matches documents that are deleted, rather than unmarked, once their outbox is empty.
    """

    collection: AsyncCollection[Doc]
    guard: Guard = _unguarded
    tombstone: Mapping[str, Any] | None = None

    @property
    def name(self) -> str:
        """The collection's name, which namespaces its leases."""
        return self.collection.name


class Leases:
    """Per-document relay leases as lock documents; an expired lease may be taken over."""

    def __init__(self, collection: AsyncCollection[Doc], now: Clock, ttl: timedelta) -> None:
        self._coll = collection
        self._now = now
        self._ttl = ttl

    async def held(self, source: str) -> list[str]:
        """Ids of the source's documents under a live lease."""
        found = self._coll.find({"source": source, "expires_at": {"$gt": self._now()}}, {"doc": 1})
        return [lease["doc"] async for lease in found]

    async def take(self, source: str, doc_id: str) -> str | None:
        """A token if the lease was free (or expired) and is now ours, else None."""
        key, now = f"{source}/{doc_id}", self._now()
        lease = {"_id": key, "source": source, "doc": doc_id, "expires_at": now + self._ttl}
        for _ in range(2):  # the second try follows the removal of an expired lease
            token = uuid.uuid4().hex
            try:
                await self._coll.insert_one(lease | {"holder": token})
            except DuplicateKeyError:
                # An expired lease is free: remove it (if it still is expired) and try again.
                stale = await self._coll.delete_one({"_id": key, "expires_at": {"$lte": now}})
                if not stale.deleted_count:
                    return None
                continue
            return token
        return None

    async def release(self, source: str, doc_id: str, token: str) -> None:
        """Give the lease up (only if it is still ours)."""
        await self._coll.delete_one({"_id": f"{source}/{doc_id}", "holder": token})


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
            except Exception:  # the relay outlives a bad round; it is logged
                log.exception("outbox relay round failed")
                timeout = _RETRY_AFTER_ERROR_S
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

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
            moved = await asyncio.gather(*(self._relay_doc(source, doc_id) for doc_id in ids))
            published += sum(moved)
            if len(ids) < self._batch or not any(moved):
                return published

    async def _candidates(self, source: OutboxSource) -> list[str]:
        """Up to `batch` marked documents nobody holds a lease on, in one query."""
        leased = await self._leases.held(source.name)
        where: Doc = {PENDING: True, "_id": {"$nin": leased}} if leased else {PENDING: True}
        found = source.collection.find(where, {"_id": 1}).limit(self._batch)
        return [doc["_id"] async for doc in found]

    async def _relay_doc(self, source: OutboxSource, doc_id: str) -> int:
        """Publish one document's outbox under its lease; how many events went out."""
        async with self._parallel:
            token = await self._leases.take(source.name, doc_id)
            if token is None:
                return 0  # another relay is on it
            keep_lease = False
            try:
                doc = await source.collection.find_one({"_id": doc_id}, {OUTBOX: 1})
                if doc is None:
                    return 0
                done, keep_lease = await self._publish_in_order(source, doc_id, doc.get(OUTBOX, []))
                await self._clean(source, doc_id, done)
                return len(done)
            finally:
                if not keep_lease:
                    await self._leases.release(source.name, doc_id, token)

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

    async def _clean(self, source: OutboxSource, doc_id: str, done: list[Doc]) -> None:
        """Remove exactly the published entries; unmark (or delete) the document once empty."""
        async with source.guard(doc_id) as held:
            if not held:
                return  # the entries stay and are published again: duplicates, never losses
            coll = source.collection
            if done:
                await coll.update_one({"_id": doc_id}, {"$pullAll": {OUTBOX: done}})
            # A document marked without any outbox array counts as empty too.
            none_left = [{OUTBOX: {"$size": 0}}, {OUTBOX: {"$exists": False}}]
            empty: Doc = {"_id": doc_id, PENDING: True, "$or": none_left}
            if source.tombstone is not None:
                deleted = await coll.delete_one(empty | dict(source.tombstone))
                if deleted.deleted_count:
                    return
            await coll.update_one(empty, {"$unset": {PENDING: ""}})

    async def pending_events(self) -> int:
        """How many events wait in every source's outboxes (the backlog gauge, tests)."""
        total = 0
        for source in self._sources:
            async for doc in source.collection.find({PENDING: True}, {OUTBOX: 1}):
                total += len(doc.get(OUTBOX, []))
        return total
