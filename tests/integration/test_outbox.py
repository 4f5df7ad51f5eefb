"""common.outbox and common.relay against the real FerretDB (and Kafka for the publish)."""

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from common.events import USERS_TOPIC, Envelope, UserRegistered, new_event
from common.infra import open_broker, open_mongo
from common.kafka import publish
from common.leases import Leases
from common.outbox import (
    OUTBOX,
    PENDING,
    OutboxEntry,
    OutboxSource,
    entry,
    push,
    with_entries,
)
from common.relay import OutboxRelay
from common.settings import ServiceSettings
from tests.support.infra import KAFKA_BOOTSTRAP, MONGO_URL
from tests.support.kafka import collect_events
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration
Doc = dict[str, Any]
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


class Recorder:
    """A publisher that records what it was given and fails on the ids it is told to."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.sent: list[tuple[str, Envelope]] = []
        self.failing: set[str] = set()
        self.delay_s = delay_s
        self.before: Callable[[Envelope], Any] | None = None
        self.published = asyncio.Event()

    async def __call__(self, topic: str, event: Envelope) -> None:
        if self.before is not None:
            await self.before(event)
        # Stands in for the broker's round trip, so concurrent relays overlap.
        await asyncio.sleep(self.delay_s)
        if event.id in self.failing:
            raise ConnectionError("broker unavailable")
        self.sent.append((topic, event))
        self.published.set()

    def ids(self) -> list[str]:
        return [event.id for _, event in self.sent]


@pytest.fixture
def settings(prefix: str) -> ServiceSettings:
    return ServiceSettings(
        kafka_bootstrap=KAFKA_BOOTSTRAP,
        topic_prefix=f"{prefix}.",
        mongo_url=MONGO_URL,
        service_name="outbox-test",
    )


@pytest.fixture
async def db(settings: ServiceSettings, prefix: str) -> AsyncIterator[AsyncDatabase[Doc]]:
    async with open_mongo(settings) as client:
        yield client[f"{prefix}_outbox"]
        await client.drop_database(f"{prefix}_outbox")


def _entry(subject: str) -> OutboxEntry:
    payload = UserRegistered(user_id=subject, email=f"{subject}@example.com", name="N")
    return entry(payload.topic, new_event(payload, source="/test", subject=subject))


async def _doc_with(coll: AsyncCollection[Doc], doc_id: str, count: int) -> list[str]:
    """Insert a document with `count` pending entries; their event ids, in order."""
    entries = [_entry(doc_id) for _ in range(count)]
    await coll.insert_one(with_entries({"_id": doc_id, "name": doc_id}, *entries))
    return [e["id"] for e in entries]


def _relay(
    db: AsyncDatabase[Doc], publisher: Recorder, clock: Clock | None = None, **kw: Any
) -> OutboxRelay:
    sources = [OutboxSource(db["users"]), OutboxSource(db["sessions"])]
    return OutboxRelay(
        sources, publisher, db["outbox_leases"], service="test", now=clock or Clock(), **kw
    )


async def test_entries_go_out_in_order_and_the_document_is_unmarked(
    db: AsyncDatabase[Doc],
) -> None:
    users, sessions = db["users"], db["sessions"]
    first = await _doc_with(users, "u1", 3)
    second = await _doc_with(sessions, "s1", 2)
    publisher = Recorder()
    relay = _relay(db, publisher)
    assert await relay.pending_events() == 5

    assert await relay.drain() == 5

    assert publisher.ids() == first + second
    assert {topic for topic, _ in publisher.sent} == {USERS_TOPIC}
    for coll, doc_id in ((users, "u1"), (sessions, "s1")):
        doc = await coll.find_one({"_id": doc_id})
        assert doc is not None
        assert doc[OUTBOX] == []
        assert PENDING not in doc
    assert await relay.pending_events() == 0
    assert await db["outbox_leases"].count_documents({}) == 0
    assert await relay.drain() == 0


async def test_a_failed_publish_stops_the_document_and_keeps_the_rest_in_order(
    db: AsyncDatabase[Doc],
) -> None:
    ids = await _doc_with(db["users"], "u1", 3)
    other = await _doc_with(db["users"], "u2", 1)
    publisher = Recorder()
    publisher.failing = {ids[1]}
    relay = _relay(db, publisher)

    assert await relay.drain() == 2

    assert sorted(publisher.ids()) == sorted([ids[0], *other])  # documents go concurrently
    doc = await db["users"].find_one({"_id": "u1"})
    assert doc is not None
    assert [e["id"] for e in doc[OUTBOX]] == ids[1:]
    assert doc[PENDING] is True
    publisher.failing = set()
    assert await relay.drain() == 2  # a failed publish released the lease: retried at once
    assert [i for i in publisher.ids() if i in ids] == ids


async def test_a_lease_holds_off_other_relays_until_it_expires(db: AsyncDatabase[Doc]) -> None:
    ids = await _doc_with(db["users"], "u1", 2)
    clock = Clock()
    # A relay that took the lease and died: its lease is all that is left of it.
    crashed = Leases(db["outbox_leases"], clock, timedelta(seconds=30))
    assert (await crashed.take("users", ["u1"]))[1] == ["u1"]
    publisher = Recorder()
    relay = _relay(db, publisher, clock, lease_s=30)

    assert await relay.drain() == 0
    clock.now = T0 + timedelta(seconds=29)
    assert await relay.drain() == 0
    clock.now = T0 + timedelta(seconds=31)
    assert await relay.drain() == 2

    assert publisher.ids() == ids
    assert await db["outbox_leases"].count_documents({}) == 0


async def test_a_malformed_entry_keeps_its_lease_and_does_not_hold_up_others(
    db: AsyncDatabase[Doc],
) -> None:
    bad = {"id": "bad", "topic": USERS_TOPIC}
    await db["users"].insert_one({"_id": "u1", OUTBOX: [bad], PENDING: True})
    good = await _doc_with(db["users"], "u2", 1)
    clock = Clock()
    publisher = Recorder()
    relay = _relay(db, publisher, clock, lease_s=30)

    assert await relay.drain() == 1

    assert publisher.ids() == good
    doc = await db["users"].find_one({"_id": "u1"})
    assert doc is not None
    assert doc[OUTBOX] == [bad]
    assert await db["outbox_leases"].count_documents({"doc": "u1"}) == 1
    fixed = _entry("u1")
    await db["users"].update_one({"_id": "u1"}, {"$set": {OUTBOX: [fixed]}})
    assert await relay.drain() == 0  # still leased: retried at the lease's pace, not hot
    clock.now = T0 + timedelta(seconds=31)
    assert await relay.drain() == 1
    assert publisher.ids() == [*good, fixed["id"]]


async def test_a_marked_document_with_an_empty_outbox_is_unmarked(
    db: AsyncDatabase[Doc],
) -> None:
    # What a crash between removing the entries and unmarking the document leaves behind.
    await db["users"].insert_one({"_id": "u1", OUTBOX: [], PENDING: True})
    await db["users"].insert_one({"_id": "u2", PENDING: True})
    relay = _relay(db, Recorder())

    assert await relay.drain() == 0

    assert await db["users"].count_documents({PENDING: True}) == 0
    assert await db["users"].count_documents({}) == 2


async def test_entries_written_while_publishing_stay_for_the_next_pass(
    db: AsyncDatabase[Doc],
) -> None:
    ids = await _doc_with(db["users"], "u1", 1)
    late = _entry("u1")
    publisher = Recorder()

    async def write_meanwhile(_: Envelope) -> None:
        publisher.before = None
        await db["users"].update_one({"_id": "u1"}, push({"$set": {"name": "x"}}, late))

    publisher.before = write_meanwhile
    relay = _relay(db, publisher)

    assert await relay.drain() == 1
    doc = await db["users"].find_one({"_id": "u1"})
    assert doc is not None
    assert doc[OUTBOX] == [late]
    assert doc[PENDING] is True
    assert doc["name"] == "x"
    assert await relay.drain() == 1
    assert publisher.ids() == [*ids, late["id"]]


async def test_push_adds_several_entries_and_the_mark(db: AsyncDatabase[Doc]) -> None:
    await db["users"].insert_one({"_id": "u1", "name": "a"})
    entries = [_entry("u1") for _ in range(3)]

    await db["users"].update_one({"_id": "u1"}, push({"$set": {"name": "b"}}, *entries))

    doc = await db["users"].find_one({"_id": "u1"})
    assert doc is not None
    assert doc[OUTBOX] == entries
    assert doc[PENDING] is True
    assert doc["name"] == "b"


async def test_a_tombstone_is_deleted_once_its_outbox_is_empty(db: AsyncDatabase[Doc]) -> None:
    coll = db["tasks"]
    await coll.insert_one(with_entries({"_id": "t1", "deleted": True}, _entry("o")))
    await coll.insert_one(with_entries({"_id": "t2", "deleted": False}, _entry("o")))
    source = OutboxSource(coll, tombstone={"deleted": True})
    relay = OutboxRelay([source], Recorder(), db["outbox_leases"], service="test")

    assert await relay.drain() == 2

    assert [d["_id"] async for d in coll.find({})] == ["t2"]


async def test_without_the_writers_guard_published_entries_stay(db: AsyncDatabase[Doc]) -> None:
    ids = await _doc_with(db["users"], "u1", 1)

    @contextlib.asynccontextmanager
    async def busy(_: Sequence[str]) -> AsyncIterator[set[str]]:
        yield set()

    relay = OutboxRelay(
        [OutboxSource(db["users"], guard=busy)], Recorder(), db["outbox_leases"], service="test"
    )

    assert await relay.drain() == 1

    doc = await db["users"].find_one({"_id": "u1"})
    assert doc is not None
    assert [e["id"] for e in doc[OUTBOX]] == ids  # published again later: a duplicate, no loss


async def test_publication_goes_on_while_clearing_is_held_back(db: AsyncDatabase[Doc]) -> None:
    """Published entries are remembered, not published again, while they wait to be cleared."""
    first = await _doc_with(db["users"], "u1", 1)

    @contextlib.asynccontextmanager
    async def busy(_: Sequence[str]) -> AsyncIterator[set[str]]:
        yield set()

    publisher = Recorder()
    source = OutboxSource(db["users"], guard=busy)
    relay = OutboxRelay([source], publisher, db["outbox_leases"], service="test")
    assert await relay.drain() == 1
    late = _entry("u1")
    await db["users"].update_one({"_id": "u1"}, push({}, late))
    relay.wrote("users", "u1")

    assert await relay.drain() == 1  # only the new entry

    assert publisher.ids() == [*first, late["id"]]
    assert (relay.uncleared, await relay.pending_events()) == (1, 0)
    doc = await db["users"].find_one({"_id": "u1"})
    assert doc is not None
    assert [e["id"] for e in doc[OUTBOX]] == [*first, late["id"]]


async def test_a_written_document_is_published_without_a_sweep(db: AsyncDatabase[Doc]) -> None:
    publisher = Recorder()
    relay = _relay(db, publisher, interval_s=600)
    started = await _doc_with(db["users"], "u0", 1)
    task = asyncio.create_task(relay.run())
    try:
        await eventually(lambda: started[0] in publisher.ids())  # the first sweep, at start
        unnamed = await _doc_with(db["users"], "u2", 1)
        named = await _doc_with(db["users"], "u1", 1)
        relay.wrote("users", "u1")
        await eventually(lambda: named[0] in publisher.ids())
        after = await _doc_with(db["users"], "u3", 1)
        relay.wrote("users", "u3")  # a later round: u1's round, sweep or not, is over
        await eventually(lambda: after[0] in publisher.ids())
        assert publisher.ids() == [*started, *named, *after]

        relay.wake()  # a sweep finds what no writer named (another replica's, a crash's)
        await eventually(lambda: unnamed[0] in publisher.ids())
        assert publisher.ids() == [*started, *named, *after, *unnamed]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_an_insert_named_with_its_outbox_is_published_without_reading_it(
    db: AsyncDatabase[Doc],
) -> None:
    given, other = _entry("u1"), _entry("u1")
    await db["users"].insert_one(with_entries({"_id": "u1"}, given))
    # Changed behind the writer's back: what the relay publishes shows what it read, if anything.
    await db["users"].update_one({"_id": "u1"}, {"$set": {OUTBOX: [other]}})
    publisher = Recorder()
    relay = _relay(db, publisher)

    relay.wrote("users", "u1", [given])
    assert await relay.drain() == 1
    assert publisher.ids() == [given["id"]]

    assert await relay.drain() == 1  # the entry it did not read is still found by a sweep
    assert publisher.ids() == [given["id"], other["id"]]


async def test_two_relays_publish_every_event_once_in_order(db: AsyncDatabase[Doc]) -> None:
    expected = {f"u{n}": await _doc_with(db["users"], f"u{n}", 3) for n in range(12)}
    publisher = Recorder(delay_s=0.005)
    relays = [_relay(db, publisher, batch=5) for _ in range(2)]

    counts = await asyncio.gather(*(relay.drain() for relay in relays))

    assert sum(counts) == 36
    sent = publisher.ids()
    assert sorted(sent) == sorted(i for ids in expected.values() for i in ids)
    for ids in expected.values():
        assert [i for i in sent if i in ids] == ids
    assert await relays[0].pending_events() == 0


async def test_wake_makes_the_running_relay_publish(db: AsyncDatabase[Doc]) -> None:
    publisher = Recorder()
    relay = _relay(db, publisher, interval_s=600)
    task = asyncio.create_task(relay.run())
    try:
        ids = await _doc_with(db["users"], "u1", 1)
        relay.wake()
        await asyncio.wait_for(publisher.published.wait(), 10)
        assert publisher.ids() == ids
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_kafka_publish_delivers_the_envelope(
    db: AsyncDatabase[Doc], settings: ServiceSettings
) -> None:
    ids = await _doc_with(db["users"], "u1", 2)
    async with open_broker(settings, [USERS_TOPIC]) as broker:
        sources = [OutboxSource(db["users"])]
        kafka = functools.partial(publish, broker, settings)
        relay = OutboxRelay(sources, kafka, db["outbox_leases"], service="test")
        assert await relay.drain() == 2

    events = await collect_events(settings.topic(USERS_TOPIC), lambda evs: len(evs) >= 2)
    assert [e.id for e in events] == ids


async def test_a_relay_past_its_lease_never_clears_entries_written_after_another_published(
    db: AsyncDatabase[Doc],
) -> None:
    await _doc_with(db["users"], "u1", 1)
    late = _entry("u1")
    publisher = Recorder()

    async def overtaken(_: Envelope) -> None:
        # While this relay publishes (its lease expired), another one published and cleared the
        # entry, and a writer then queued a new one: the same size as read, a different entry.
        publisher.before = None
        await db["users"].update_one({"_id": "u1"}, {"$set": {OUTBOX: [late]}})

    publisher.before = overtaken
    relay = _relay(db, publisher)

    assert await relay.drain() == 1

    doc = await db["users"].find_one({"_id": "u1"})
    assert doc is not None
    assert doc[OUTBOX] == [late]
    assert doc[PENDING] is True
