"""Delivery claims and rate slots on the real database, including races between replicas."""

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from pymongo import AsyncMongoClient

from common.clock import utcnow
from services.notifier.domain import Preferences
from services.notifier.storage import Store
from tests.support.infra import MONGO_URL

pytestmark = pytest.mark.integration
Client = AsyncMongoClient[dict[str, object]]


@pytest.fixture
async def clients() -> AsyncIterator[list[Client]]:
    """Separate clients, as separate notifier processes would have."""
    made: list[Client] = [AsyncMongoClient(MONGO_URL, tz_aware=True) for _ in range(4)]
    try:
        yield made
    finally:
        for client in made:
            await client.close()


@pytest.fixture
async def stores(clients: list[Client], prefix: str) -> list[Store]:
    made = [Store(client[f"{prefix}_notifier"]) for client in clients]
    await made[0].ensure_indexes()
    return made


async def test_a_finished_event_is_never_claimed_again(stores: list[Store]) -> None:
    store = stores[0]
    assert (await store.claim("c", "e1", "a", 30)).fresh
    assert (await store.claim("c", "e1", "b", 30)).status == "busy"
    await store.finish("c", "e1", "sent")

    assert (await store.claim("c", "e1", "b", 30)).status == "done"


async def test_a_released_claim_is_taken_over_by_the_next_attempt(stores: list[Store]) -> None:
    store = stores[0]
    await store.claim("c", "e1", "a", 30)
    await store.release("c", "e1", "a", "retrying", "SMTP down")

    claim = await store.claim("c", "e1", "b", 30)
    assert (claim.status, claim.fresh, claim.previous) == ("claimed", False, "retrying")


async def test_a_dead_senders_claim_is_taken_over_once_its_lease_ran_out(
    stores: list[Store], clients: list[Client], prefix: str
) -> None:
    db, now = clients[0][f"{prefix}_notifier"], utcnow()
    crashed = Store(db, clock=lambda: now)
    await crashed.claim("c", "e1", "crashed", lease_s=30)
    later = Store(db, clock=lambda: now + timedelta(seconds=31))

    claim = await later.claim("c", "e1", "b", 30)
    assert (claim.status, claim.previous) == ("claimed", "sending")


async def test_racing_replicas_take_a_free_claim_exactly_once(stores: list[Store]) -> None:
    await stores[0].claim("c", "fresh", "seed", 30)
    await stores[0].release("c", "fresh", "seed", "retrying", "x")
    rivals = [s for s in stores for _ in range(3)]

    results = await asyncio.gather(
        *(s.claim("c", "fresh", f"owner{n}", 30) for n, s in enumerate(rivals)),
        *(s.claim("c", "new", f"owner{n}", 30) for n, s in enumerate(rivals)),
    )

    taken = [r for r in results if r.status == "claimed"]
    assert len(taken) == 2
    assert sum(r.fresh for r in taken) == 1


async def test_rate_slots_hold_the_cap_under_concurrency(stores: list[Store]) -> None:
    rivals = [s for s in stores for _ in range(3)]

    granted = await asyncio.gather(*(s.take_send_slot("u1", 100, 5) for s in rivals))

    assert sum(granted) == 5
    assert await stores[0].take_send_slot("u1", 200, 5)  # a new window starts afresh


async def test_preferences_default_then_persist(stores: list[Store]) -> None:
    store = stores[0]
    assert await store.preferences("u1") == Preferences(reminders=True)
    await asyncio.gather(*(s.save_preferences("u1", Preferences(reminders=False)) for s in stores))

    assert await stores[1].preferences("u1") == Preferences(reminders=False)


async def test_pruning_forgets_only_old_finished_deliveries(stores: list[Store]) -> None:
    store = stores[0]
    for event in ("old-sent", "open"):
        await store.claim("c", event, "a", 30)
    await store.finish("c", "old-sent", "sent")

    removed = await store.prune(datetime.now(UTC) + timedelta(seconds=1))

    assert removed == 1
    assert await store.delivery("c", "old-sent") is None
    assert await store.delivery("c", "open") is not None
    assert await store.prune(datetime.now(UTC) - timedelta(days=1)) == 0


async def test_a_record_from_before_the_id_key_is_still_taken_over_and_finished(
    stores: list[Store], clients: list[Client], prefix: str
) -> None:
    store, db = stores[0], clients[0][f"{prefix}_notifier"]
    expired = utcnow() - timedelta(seconds=1)
    legacy = {"consumer": "c", "event_id": "old", "state": "sending", "round": 1}
    await db["deliveries"].insert_one({**legacy, "owner": "gone", "lease_until": expired})

    claim = await store.claim("c", "old", "b", 30)
    assert (claim.status, claim.previous) == ("claimed", "sending")
    await store.finish("c", "old", "sent")

    assert (await store.claim("c", "old", "c", 30)).status == "done"
    assert await db["deliveries"].count_documents({"event_id": "old"}) == 1


async def test_a_delivery_is_keyed_by_consumer_and_event_id(
    stores: list[Store], clients: list[Client], prefix: str
) -> None:
    await stores[0].claim("c", "e1", "a", 30)
    found = await clients[0][f"{prefix}_notifier"]["deliveries"].find_one({"_id": "c:e1"})
    assert found is not None
    assert found["state"] == "sending"
