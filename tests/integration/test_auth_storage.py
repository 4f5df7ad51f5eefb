"""Auth storage, outbox relay and login throttle against the real FerretDB, Kafka and Redis."""

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from faststream.kafka import KafkaBroker

from common.events import USERS_TOPIC, UserRegistered
from common.infra import MongoClient, open_broker, open_mongo, open_redis
from services.auth.domain import Session, User, new_id, new_refresh_token, outbox_entry
from services.auth.events import OutboxRelay
from services.auth.settings import AuthSettings
from services.auth.storage import AuthStore
from services.auth.throttle import LoginThrottle
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


@pytest.fixture
async def store(mongo: MongoClient, settings: AuthSettings) -> AuthStore:
    store = AuthStore(mongo, settings.mongo_db)
    await store.ensure_indexes()
    return store


@pytest.fixture
async def broker(settings: AuthSettings) -> AsyncIterator[KafkaBroker]:
    async with open_broker(settings, [USERS_TOPIC]) as started:
        yield started


async def _user_with_pending_event(store: AuthStore) -> tuple[User, str]:
    """A user written with its event but never relayed: what a crash after the write leaves."""
    now = datetime.now(UTC)
    user = User(
        id=new_id(), email=f"{new_id()}@example.com", name="N", password_hash="x", created_at=now
    )
    entry = outbox_entry(UserRegistered(user_id=user.id, email=user.email, name="N"), user.id)
    await store.insert_user(user, entry)
    return user, entry["id"]


async def test_relay_publishes_a_leftover_event_once_and_removes_it(
    store: AuthStore, broker: KafkaBroker, settings: AuthSettings
) -> None:
    user, event_id = await _user_with_pending_event(store)
    relay = OutboxRelay(store, broker, settings, poll_s=1.0)
    assert await store.pending_events() == 1

    assert await relay.drain() == 1
    assert await relay.drain() == 0
    assert await store.pending_events() == 0
    doc = await store.users.find_one({"_id": user.id})
    assert doc is not None
    assert doc["outbox"] == []
    assert "outbox_at" not in doc
    assert "outbox_lease" not in doc

    events = await collect_events(
        settings.topic(USERS_TOPIC), lambda evs: any(e.id == event_id for e in evs)
    )
    assert [e.id for e in events] == [event_id]
    assert events[0].subject == user.id


async def test_concurrent_relay_passes_never_publish_the_same_event(
    store: AuthStore, broker: KafkaBroker, settings: AuthSettings
) -> None:
    ids = [(await _user_with_pending_event(store))[1] for _ in range(6)]
    relays = [OutboxRelay(store, broker, settings, poll_s=1.0) for _ in range(2)]

    counts = await asyncio.gather(*(relay.drain() for relay in relays))

    assert sum(counts) == len(ids)
    events = await collect_events(settings.topic(USERS_TOPIC), lambda evs: len(evs) >= len(ids))
    assert sorted(e.id for e in events) == sorted(ids)


async def test_only_one_of_two_concurrent_rotations_wins(store: AuthStore) -> None:
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
    await store.insert_session(session)

    results = await asyncio.gather(
        store.rotate(session, new_refresh_token(session_id)[1], now),
        store.rotate(session, new_refresh_token(session_id)[1], now),
    )

    assert sorted(results) == [False, True]
    stored = await store.session(session_id)
    assert stored is not None
    assert stored.previous_hash == first_hash


async def test_replicas_agree_on_one_development_key(
    mongo: MongoClient, settings: AuthSettings
) -> None:
    replicas = [AuthStore(mongo, settings.mongo_db) for _ in range(2)]
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
        backoffs = [await throttle.failed(email) for _ in range(8)]
        assert backoffs == [0, 1, 2, 3, 3, 3, 3, 3]
        assert 1 <= await throttle.retry_after(email) <= 3
        await throttle.succeeded(email)
        assert await throttle.retry_after(email) == 0
        assert await throttle.failed(email) == 0
        await throttle.succeeded(email)


async def test_a_malformed_entry_does_not_hold_up_the_others(
    store: AuthStore, broker: KafkaBroker, settings: AuthSettings
) -> None:
    poisoned, _ = await _user_with_pending_event(store)
    await store.users.update_one(
        {"_id": poisoned.id}, {"$set": {"outbox": [{"id": "bad", "topic": USERS_TOPIC}]}}
    )
    _, good_id = await _user_with_pending_event(store)
    relay = OutboxRelay(store, broker, settings, poll_s=1.0)

    assert await relay.drain() == 1

    events = await collect_events(
        settings.topic(USERS_TOPIC), lambda evs: any(e.id == good_id for e in evs)
    )
    assert [e.id for e in events] == [good_id]
    doc = await store.users.find_one({"_id": poisoned.id})
    assert doc is not None
    assert doc["outbox"] == [{"id": "bad", "topic": USERS_TOPIC}]
    assert "outbox_lease" in doc


async def test_an_expired_reset_token_is_neither_found_nor_spendable(store: AuthStore) -> None:
    user, _ = await _user_with_pending_event(store)
    now = datetime.now(UTC)
    entry = outbox_entry(UserRegistered(user_id=user.id, email=user.email, name="N"), user.id)
    await store.set_reset(user.id, "hash-1", now - timedelta(seconds=1), now, entry)

    assert await store.user_by_reset("hash-1", now) is None
    assert not await store.consume_reset(user.id, "hash-1", "new-hash", now, entry)
    stored = await store.user(user.id)
    assert stored is not None
    assert stored.password_hash == "x"
