"""The response cache: HIT after MISS, ETag/304 without the service, no stale read after a write,
invalidation by task events from Kafka, coalesced misses, Vary, per-user isolation."""

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import structlog
import structlog.testing
from faststream.kafka import KafkaBroker

from common.events import TASKS_TOPIC, USERS_TOPIC, SessionsRevoked, TaskSnapshot, TaskUpdated
from common.events import new_event as envelope
from common.kafka import make_broker, publish
from gateway.settings import GatewaySettings
from tests.support.gateway import gateway_client, gateway_settings, publish_revocation
from tests.support.infra import free_port
from tests.support.redis_server import RedisServer
from tests.support.servers import EchoUpstream
from tests.support.tokens import SigningKey
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


@dataclass
class Stack:
    settings: GatewaySettings
    key: SigningKey
    tasks: EchoUpstream
    client: httpx.AsyncClient
    broker: KafkaBroker

    def auth(self, user: str, session: str = "sess-1") -> dict[str, str]:
        token, _ = self.key.mint(user, session_id=session)
        return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
async def stack() -> AsyncIterator[Stack]:
    key = SigningKey.generate()
    tasks = await EchoUpstream("tasks").start()
    # A TTL far beyond every poll below: a MISS there can only come from an invalidation.
    settings = gateway_settings(f"gwc{uuid.uuid4().hex[:10]}", key, tasks.url, cache_ttl_s=600)
    broker = make_broker(settings)
    try:
        async with gateway_client(settings) as client:
            await broker.start()
            try:
                yield Stack(settings, key, tasks, client, broker)
            finally:
                await broker.stop()
    finally:
        await tasks.stop()


def user() -> str:
    return uuid.uuid4().hex


async def publish_task_update(
    broker: KafkaBroker, settings: GatewaySettings, owner: str, task_id: str
) -> None:
    """What the tasks service publishes when `owner` renames a task."""
    task = TaskSnapshot(
        id=task_id, owner=owner, title="x", status="todo", priority="low", version=1
    )
    event = envelope(TaskUpdated(task=task, changed=("title",)), source="tasks", subject=owner)
    await publish(broker, settings, TASKS_TOPIC, event)


async def test_second_read_is_a_hit_and_never_reaches_the_service(stack: Stack) -> None:
    me = stack.auth(user())
    path = f"/api/tasks/{uuid.uuid4().hex}"
    first = await stack.client.get(path, headers=me)
    second = await stack.client.get(path, headers=me)
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT")
    assert second.content == first.content
    assert second.headers["etag"] == first.headers["etag"]
    assert stack.tasks.hits[path] == 1


async def test_matching_etag_answers_304_without_the_service(stack: Stack) -> None:
    me = stack.auth(user())
    path = f"/api/tasks/{uuid.uuid4().hex}"
    etag = (await stack.client.get(path, headers=me)).headers["etag"]
    response = await stack.client.get(path, headers={**me, "If-None-Match": etag})
    assert response.status_code == 304
    assert response.content == b""
    assert response.headers["etag"] == etag
    assert response.headers["x-content-type-options"] == "nosniff"
    other = await stack.client.get(path, headers={**me, "If-None-Match": '"other"'})
    assert other.status_code == 200
    assert stack.tasks.hits[path] == 1


async def test_a_write_through_the_gateway_is_visible_on_the_next_read(stack: Stack) -> None:
    me = stack.auth(user())
    path = f"/api/tasks/{uuid.uuid4().hex}"
    assert (await stack.client.get(path, headers=me)).json()["data"] is None
    patched = await stack.client.patch(path, headers=me, json={"title": "new"})
    assert patched.status_code == 200
    after = await stack.client.get(path, headers=me)
    assert after.headers["x-cache"] == "MISS"
    assert after.json()["data"] == '{"title":"new"}'


async def test_a_task_event_from_kafka_invalidates_the_owners_cache(stack: Stack) -> None:
    owner = user()
    me = stack.auth(owner)
    path = f"/api/tasks/{uuid.uuid4().hex}"
    await stack.client.get(path, headers=me)
    assert (await stack.client.get(path, headers=me)).headers["x-cache"] == "HIT"
    await publish_task_update(stack.broker, stack.settings, owner, "t1")

    async def missed() -> bool:
        return (await stack.client.get(path, headers=me)).headers["x-cache"] == "MISS"

    await eventually(missed)


async def test_concurrent_misses_share_one_upstream_call(stack: Stack) -> None:
    me = stack.auth(user())
    path = f"/api/tasks/slow?s=0.3&k={uuid.uuid4().hex}"
    responses = await asyncio.gather(*(stack.client.get(path, headers=me) for _ in range(10)))
    assert {r.status_code for r in responses} == {200}
    assert len({r.content for r in responses}) == 1
    query = path.split("?")[1]
    assert sum(1 for seen in stack.tasks.requests if seen["query"] == query) == 1


async def test_entries_are_per_user_per_query_and_per_vary(stack: Stack) -> None:
    path = f"/api/tasks/{uuid.uuid4().hex}"
    alice, bob = stack.auth(user()), stack.auth(user())
    assert (await stack.client.get(path, headers=alice)).headers["x-cache"] == "MISS"
    assert (await stack.client.get(path, headers=bob)).headers["x-cache"] == "MISS"
    # The same query in another order is the same resource.
    await stack.client.get(f"{path}?a=1&b=2", headers=alice)
    assert (await stack.client.get(f"{path}?b=2&a=1", headers=alice)).headers["x-cache"] == "HIT"
    vary = {**alice, "Accept": "application/xml"}
    assert (await stack.client.get(path, headers=vary)).headers["x-cache"] == "MISS"


async def test_no_store_and_request_no_cache_bypass(stack: Stack) -> None:
    me = stack.auth(user())
    path = f"/api/tasks/{uuid.uuid4().hex}"
    headers = {**me, "x-echo-cache-control": "no-store"}
    assert (await stack.client.get(path, headers=headers)).headers["x-cache"] == "BYPASS"
    assert (await stack.client.get(path, headers=headers)).headers["x-cache"] == "BYPASS"
    fresh = await stack.client.get(path, headers={**me, "Cache-Control": "no-cache"})
    assert fresh.headers["x-cache"] == "BYPASS"
    assert stack.tasks.hits[path] == 3


async def test_revoked_sessions_are_refused_once_the_event_arrives(stack: Stack) -> None:
    who = user()
    revoked, kept = stack.auth(who, "s-gone"), stack.auth(who, "s-kept")
    assert (await stack.client.get("/api/tasks", headers=revoked)).status_code == 200
    await publish_revocation(stack.broker, stack.settings, who, "s-gone")

    async def refused() -> bool:
        return (await stack.client.get("/api/tasks", headers=revoked)).status_code == 401

    await eventually(refused)
    assert (await stack.client.get("/api/tasks", headers=kept)).status_code == 200


async def test_revoking_all_sessions_refuses_tokens_issued_before(stack: Stack) -> None:
    who = user()
    old = stack.auth(who, "s-old")
    await publish_revocation(stack.broker, stack.settings, who, reason="password_changed")

    async def refused() -> bool:
        return (await stack.client.get("/api/tasks", headers=old)).status_code == 401

    await eventually(refused)
    token, _ = stack.key.mint(who, session_id="s-new", now=time.time() + 2)
    fresh = await stack.client.get("/api/tasks", headers={"Authorization": f"Bearer {token}"})
    assert fresh.status_code == 200


async def test_a_cut_off_refuses_sessions_begun_before_it_to_the_ms_not_by_iat(
    stack: Stack,
) -> None:
    """Issue 12 item 1 at the edge: both tokens are issued in the cut-off's second."""
    who = user()
    now = datetime.now(UTC)
    cut = now.replace(microsecond=now.microsecond // 1000 * 1000)  # whole ms, as auth sends it
    old_token, _ = stack.key.mint(
        who, "s-old", now=cut.timestamp(), session_started=cut - timedelta(milliseconds=1)
    )
    new_token, _ = stack.key.mint(who, "s-new", now=cut.timestamp(), session_started=cut)
    revoked = SessionsRevoked(user_id=who, revoked_before=cut, reason="logout_all")
    await publish(
        stack.broker, stack.settings, USERS_TOPIC, envelope(revoked, source="a", subject=who)
    )

    async def refused() -> bool:
        old = {"Authorization": f"Bearer {old_token}"}
        return (await stack.client.get("/api/tasks", headers=old)).status_code == 401

    await eventually(refused, what="the session begun 1 ms before the cut-off refused")
    new = {"Authorization": f"Bearer {new_token}"}
    assert (await stack.client.get("/api/tasks", headers=new)).status_code == 200


async def test_a_new_gateway_process_knows_earlier_revocations(stack: Stack) -> None:
    who = user()
    await publish_revocation(stack.broker, stack.settings, who, "s-x")
    headers = stack.auth(who, "s-x")

    async def refused() -> bool:
        return (await stack.client.get("/api/tasks", headers=headers)).status_code == 401

    await eventually(refused)
    # Same Redis namespace, other topics: what it knows can only come from Redis.
    later = stack.settings.model_copy(
        update={"topic_prefix": f"{uuid.uuid4().hex[:10]}.", "metrics_port": free_port()}
    )
    async with gateway_client(later) as client:
        assert (await client.get("/api/tasks", headers=headers)).status_code == 401


async def test_a_malformed_event_does_not_block_the_ones_behind_it(stack: Stack) -> None:
    owner = user()
    me = stack.auth(owner)
    path = f"/api/tasks/{uuid.uuid4().hex}"
    await stack.client.get(path, headers=me)
    topic = stack.settings.topic(TASKS_TOPIC)
    # Same key, so same partition, ahead of the good event.
    await stack.broker.publish(b"not json", topic=topic, key=owner.encode())
    await stack.broker.publish({"type": "x"}, topic=topic, key=owner.encode())
    await publish_task_update(stack.broker, stack.settings, owner, "t2")

    async def missed() -> bool:
        return (await stack.client.get(path, headers=me)).headers["x-cache"] == "MISS"

    await eventually(missed)


async def test_an_event_redis_could_not_take_is_applied_once_redis_is_back() -> None:
    key = SigningKey.generate()
    tasks = await EchoUpstream("tasks").start()
    # Redis keeps what it had (as deployed, with its append-only file): only the event may bump.
    server = RedisServer(persistent=True).start()
    settings = gateway_settings(
        f"gwe{uuid.uuid4().hex[:10]}", key, tasks.url, redis_url=server.url, cache_ttl_s=600
    )
    broker = make_broker(settings)
    owner = user()
    token, _ = key.mint(owner)
    me = {"Authorization": f"Bearer {token}"}
    try:
        async with gateway_client(settings) as client:
            await broker.start()
            await client.get("/api/tasks/x", headers=me)
            assert (await client.get("/api/tasks/x", headers=me)).headers["x-cache"] == "HIT"
            server.kill()
            with structlog.testing.capture_logs() as logs:
                await publish_task_update(broker, settings, owner, "t")

                async def refused_by_redis() -> bool:
                    return any("redelivered" in entry["event"] for entry in logs)

                await eventually(refused_by_redis)
            server.start()
            # Redis came back with the old generation, so the L1 entry would be a HIT,
            # until the redelivered event bumps the owner's generation.

            async def missed() -> bool:
                return (await client.get("/api/tasks/x", headers=me)).headers["x-cache"] == "MISS"

            await eventually(missed)
            await broker.stop()
    finally:
        server.stop()
        await tasks.stop()
