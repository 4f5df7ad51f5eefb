"""Auth storage, outbox relay and login throttle against the real FerretDB, Kafka and Redis."""

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from faststream.kafka import KafkaBroker
from pymongo.asynchronous.database import AsyncDatabase

from common.events import USERS_TOPIC, UserRegistered, new_event
from common.infra import MongoClient, open_broker, open_mongo, open_redis
from common.outbox import PENDING
from common.relay import OutboxRelay
from services.auth.domain import Session, User, new_id, new_refresh_token
from services.auth.events import outbox_relay, queued
from services.auth.keys_store import MongoDevKeys
from services.auth.sessions_store import MongoSessions
from services.auth.settings import AuthSettings
from services.auth.throttle import LoginThrottle
from services.auth.users import MongoUsers
from tests.support.infra import KAFKA_BOOTSTRAP, MONGO_URL, REDIS_URL
from tests.support.kafka import collect_events

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(prefix: str) -> AuthSettings:
    return AuthSettings(
        kafka_bootstrap=KAFKA_BOOTSTRAP,
        topic_prefix=f"{prefix}.",
        mongo_url=MONGO_URL,
        mongo_db=f"{prefix}_auth",
        redis_url=REDIS_URL,
        redis_prefix=f"{prefix}:",
    )


@pytest.fixture
async def mongo(settings: AuthSettings) -> AsyncIterator[MongoClient]:
    async with open_mongo(settings) as client:
        yield client
        await client.drop_database(settings.mongo_db)


@dataclass
class Store:
    """The auth collections as the service builds them."""

    db: AsyncDatabase[dict[str, Any]]
    users: MongoUsers
    sessions: MongoSessions

    def relay(self, broker: KafkaBroker, settings: AuthSettings) -> OutboxRelay:
        return outbox_relay(self.db, self.users, self.sessions, broker, settings)


@pytest.fixture
async def store(mongo: MongoClient, settings: AuthSettings) -> Store:
    db = mongo[settings.mongo_db]
    store = Store(db, MongoUsers(db), MongoSessions(db))
    await store.users.ensure_indexes()
    await store.sessions.ensure_indexes()
    return store


@pytest.fixture
async def broker(settings: AuthSettings) -> AsyncIterator[KafkaBroker]:
    async with open_broker(settings, [USERS_TOPIC]) as started:
        yield started


async def _user_with_pending_event(store: Store) -> tuple[User, str]:
    """A user written with its event but never relayed: what a crash after the write leaves."""
    now = datetime.now(UTC)
    user = User(
        id=new_id(), email=f"{new_id()}@example.com", name="N", password_hash="x", created_at=now
    )
    entry = queued(UserRegistered(user_id=user.id, email=user.email, name="N"), user.id)
    await store.users.insert(user, entry)
    return user, entry["id"]


async def test_relay_publishes_a_leftover_event_once_and_removes_it(
    store: Store, broker: KafkaBroker, settings: AuthSettings
) -> None:
    user, event_id = await _user_with_pending_event(store)
    relay = store.relay(broker, settings)
    assert await relay.pending_events() == 1

    assert await relay.drain() == 1
    assert await relay.drain() == 0
    assert await relay.pending_events() == 0
    doc = await store.users.collection.find_one({"_id": user.id})
    assert doc is not None
    assert doc["outbox"] == []
    assert PENDING not in doc
    assert await store.db["outbox_leases"].count_documents({"doc": user.id}) == 0

    events = await collect_events(
        settings.topic(USERS_TOPIC), lambda evs: any(e.id == event_id for e in evs)
    )
    assert [e.id for e in events] == [event_id]
    assert events[0].subject == user.id


async def test_concurrent_relay_passes_never_publish_the_same_event(
    store: Store, broker: KafkaBroker, settings: AuthSettings
) -> None:
    ids = [(await _user_with_pending_event(store))[1] for _ in range(6)]
    relays = [store.relay(broker, settings) for _ in range(2)]

    counts = await asyncio.gather(*(relay.drain() for relay in relays))

    assert sum(counts) == len(ids)
    events = await collect_events(settings.topic(USERS_TOPIC), lambda evs: len(evs) >= len(ids))
    assert sorted(e.id for e in events) == sorted(ids)


async def test_only_one_of_two_concurrent_rotations_wins(store: Store) -> None:
    """FerretDB alone lets both conditional updates succeed; the store's document lock does not."""
    now = datetime.now(UTC)
    session_id = new_id()
    _, first_hash = new_refresh_token(session_id)
    session = Session(
        id=session_id,
        user_id="u1",
        current_hash=first_hash,
        created_at=now,
        expires_at=now + timedelta(days=1),
    )
    await store.sessions.insert(session)

    results = await asyncio.gather(
        store.sessions.rotate(session, new_refresh_token(session_id)[1], now),
        store.sessions.rotate(session, new_refresh_token(session_id)[1], now),
    )

    assert sorted(results) == [False, True]
    stored = await store.sessions.get(session_id)
    assert stored is not None
    assert stored.previous_hash == first_hash


async def test_replicas_agree_on_one_development_key(
    mongo: MongoClient, settings: AuthSettings
) -> None:
    replicas = [MongoDevKeys(mongo[settings.mongo_db]) for _ in range(2)]
    proposals = [("kid-a", "pem-a"), ("kid-b", "pem-b")]

    chosen = await asyncio.gather(
        *(r.dev_key(*p) for r, p in zip(replicas, proposals, strict=True))
    )

    assert chosen[0] == chosen[1]
    assert chosen[0] in proposals


async def test_login_backoff_is_capped_and_cleared_by_success(settings: AuthSettings) -> None:
    async with open_redis(settings) as redis:
        throttle = LoginThrottle(
            redis, settings.redis_prefix, free_attempts=2, cap_s=3, window_s=60
        )
        email = f"{new_id()}@example.com"
        backoffs = [await throttle.failed(email, "192.0.2.1") for _ in range(8)]
        assert backoffs == [0, 1, 2, 3, 3, 3, 3, 3]
        assert 1 <= await throttle.retry_after(email, "192.0.2.1") <= 3
        await throttle.succeeded(email, "192.0.2.1")
        assert await throttle.retry_after(email, "192.0.2.1") == 0
        assert await throttle.failed(email, "192.0.2.1") == 0
        await throttle.succeeded(email, "192.0.2.1")


async def test_a_malformed_entry_does_not_hold_up_the_others(
    store: Store, broker: KafkaBroker, settings: AuthSettings
) -> None:
    poisoned, _ = await _user_with_pending_event(store)
    await store.users.collection.update_one(
        {"_id": poisoned.id}, {"$set": {"outbox": [{"id": "bad", "topic": USERS_TOPIC}]}}
    )
    _, good_id = await _user_with_pending_event(store)
    relay = store.relay(broker, settings)

    assert await relay.drain() == 1

    events = await collect_events(
        settings.topic(USERS_TOPIC), lambda evs: any(e.id == good_id for e in evs)
    )
    assert [e.id for e in events] == [good_id]
    doc = await store.users.collection.find_one({"_id": poisoned.id})
    assert doc is not None
    assert doc["outbox"] == [{"id": "bad", "topic": USERS_TOPIC}]
    assert await store.db["outbox_leases"].count_documents({"doc": poisoned.id}) == 1


async def test_an_expired_reset_token_is_neither_found_nor_spendable(store: Store) -> None:
    user, _ = await _user_with_pending_event(store)
    now = datetime.now(UTC)
    entry = queued(UserRegistered(user_id=user.id, email=user.email, name="N"), user.id)
    await store.users.set_reset(user.id, "hash-1", now - timedelta(seconds=1), now, entry)

    assert await store.users.by_reset("hash-1", now) is None
    assert not await store.users.consume_reset(user.id, "hash-1", "new-hash", now, entry)
    stored = await store.users.get(user.id)
    assert stored is not None
    assert stored.password_hash == "x"


async def test_an_outbox_left_in_the_old_layout_is_upgraded_and_relayed(
    mongo: MongoClient, broker: KafkaBroker, settings: AuthSettings
) -> None:
    db = mongo[settings.mongo_db]
    payload = UserRegistered(user_id="u1", email="u1@example.com", name="N")
    event = new_event(payload, source="/taskbus/auth", subject="u1")
    old = {"id": event.id, "topic": USERS_TOPIC, "json": event.model_dump_json()}
    await db["users"].create_index("outbox_at")
    await db["users"].insert_one(
        {"_id": "u1", "email": "u1@example.com", "outbox": [old], "outbox_at": datetime.now(UTC)}
    )
    store = Store(db, MongoUsers(db), MongoSessions(db))

    await store.users.ensure_indexes()

    doc = await store.users.collection.find_one({"_id": "u1"})
    assert doc is not None
    assert "outbox_at" not in doc
    assert doc[PENDING] is True
    assert "outbox_at_1" not in await store.users.collection.index_information()
    assert await store.relay(broker, settings).drain() == 1
    events = await collect_events(
        settings.topic(USERS_TOPIC), lambda evs: any(e.id == event.id for e in evs)
    )
    assert [e.id for e in events] == [event.id]
