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

Per document and batch, common.relay says how the relay publishes and clears them.
"""

import contextlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, TypedDict

from pymongo.asynchronous.collection import AsyncCollection

from common.events import Envelope

Doc = dict[str, Any]
OUTBOX = "outbox"
PENDING = "outbox_pending"
Guard = Callable[[Sequence[str]], AbstractAsyncContextManager[set[str]]]
GuardOne = Callable[[str], AbstractAsyncContextManager[bool]]


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
async def _unguarded(doc_ids: Sequence[str]) -> AsyncIterator[set[str]]:
    yield set(doc_ids)


def each(guard: GuardOne) -> Guard:
    """A batch guard made of a per-document one, taken in sorted order (no two batches deadlock)."""

    @contextlib.asynccontextmanager
    async def hold(doc_ids: Sequence[str]) -> AsyncIterator[set[str]]:
        async with contextlib.AsyncExitStack() as stack:
            held = {d for d in sorted(doc_ids) if await stack.enter_async_context(guard(d))}
            yield held

    return hold


@dataclass(frozen=True)
class OutboxSource:
    """A collection whose documents carry outboxes.

    `guard(doc_ids)` serialises the relay's removal with the service's writers of those documents
    and yields the ids it holds (the others keep their entries until a later visit). `tombstone`
    matches documents that are deleted, rather than unmarked, once their outbox is empty.
    """

    collection: AsyncCollection[Doc]
    guard: Guard = _unguarded
    tombstone: Mapping[str, Any] | None = None

    @property
    def name(self) -> str:
        """The collection's name, which namespaces its leases."""
        return self.collection.name

    def projection(self) -> Doc:
        """What the relay reads of a document: its outbox and what tells a tombstone."""
        return {OUTBOX: 1, **dict.fromkeys(self.tombstone or {}, 1)}

    def is_tombstone(self, doc: Doc) -> bool:
        """Whether a document read with `projection()` is deleted once its outbox is empty."""
        tomb = self.tombstone
        return tomb is not None and all(doc.get(k) == v for k, v in tomb.items())
