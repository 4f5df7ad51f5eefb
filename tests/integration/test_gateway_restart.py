"""A Redis that comes back empty (no persistence, a failover): revoked tokens stay refused and no
cached read from before the restart is served."""

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
import pytest
import redis
from faststream.kafka import KafkaBroker

from common.events import USERS_TOPIC, SessionsRevoked
from common.events import new_event as envelope
from common.kafka import make_broker, publish
from gateway.settings import GatewaySettings
from tests.support.gateway import gateway_client, gateway_settings
from tests.support.redis_server import RedisServer
from tests.support.servers import EchoUpstream
from tests.support.tasks import eventually
from tests.support.tokens import SigningKey

pytestmark = pytest.mark.integration


@dataclass
class Restartable:
    """A gateway over a Redis of its own without persistence."""

    server: RedisServer
    settings: GatewaySettings
    key: SigningKey
    client: httpx.AsyncClient
    broker: KafkaBroker

    def bearer(self, user: str, session: str = "s-1") -> dict[str, str]:
        token, _ = self.key.mint(user, session_id=session)
        return {"Authorization": f"Bearer {token}"}

    async def restart_empty(self) -> None:
        """SIGKILL and start again (everything Redis held is gone), until the gateway reaches it."""
        self.server.kill()
        await self.back()

    async def back(self) -> None:
        """Start Redis; return once the gateway's gate calls reach it again (no fail-open)."""
        self.server.start()

        async def reached() -> bool:
            reply = await self.client.get("/.well-known/jwks.json")
            return "ratelimit" in reply.headers

        await eventually(reached)

    async def bearer_after_loss(self, user: str) -> dict[str, str]:
        """A token issued after the moment the gateway found Redis empty."""
        marker = redis.Redis.from_url(self.server.url).get(f"{self.settings.redis_prefix}epoch")
        assert isinstance(marker, bytes)
        lost_s = int(marker.split(b":")[1]) / 1000
        assert lost_s > 0  # the gateway recorded the loss

        async def past_it() -> bool:
            return int(time.time()) >= lost_s

        await eventually(past_it)
        return self.bearer(user, "s-new")


@pytest.fixture
async def restartable() -> AsyncIterator[Restartable]:
    key = SigningKey.generate()
    tasks = await EchoUpstream("tasks").start()
    server = RedisServer().start()
    settings = gateway_settings(
        f"gwr{uuid.uuid4().hex[:10]}", key, tasks.url, redis_url=server.url, cache_ttl_s=600
    )
    broker = make_broker(settings)
    try:
        async with gateway_client(settings) as client:
            await broker.start()
            try:
                yield Restartable(server, settings, key, client, broker)
            finally:
                await broker.stop()
    finally:
        server.kill()
        await tasks.stop()


async def test_a_revoked_token_stays_refused_after_redis_restarts_empty(
    restartable: Restartable,
) -> None:
    who = uuid.uuid4().hex
    revoked = restartable.bearer(who, "s-gone")
    assert (await restartable.client.get("/api/tasks", headers=revoked)).status_code == 200
    payload = SessionsRevoked(
        user_id=who, session_ids=("s-gone",), revoked_before=datetime.now(UTC), reason="logout"
    )
    event = envelope(payload, source="auth", subject=who)
    await publish(restartable.broker, restartable.settings, USERS_TOPIC, event)

    async def refused() -> bool:
        return (await restartable.client.get("/api/tasks", headers=revoked)).status_code == 401

    await eventually(refused)
    await restartable.restart_empty()
    after = await restartable.client.get("/api/tasks", headers=revoked)
    assert after.status_code == 401
    assert after.headers["content-type"] == "application/problem+json"
    assert after.headers["www-authenticate"].startswith("Bearer")
    fresh = await restartable.bearer_after_loss(who)
    assert (await restartable.client.get("/api/tasks", headers=fresh)).status_code == 200


async def test_no_read_cached_before_redis_restarts_empty_is_served_after(
    restartable: Restartable,
) -> None:
    owner = uuid.uuid4().hex
    me = restartable.bearer(owner)
    path = f"/api/tasks/{uuid.uuid4().hex}"
    client = restartable.client
    assert (await client.get(path, headers=me)).headers["x-cache"] == "MISS"
    assert (await client.get(path, headers=me)).headers["x-cache"] == "HIT"
    # The write moves the generation to 1; an empty Redis would start it at 0 again.
    assert (await client.patch(path, headers=me, content=b'{"title":"v1"}')).status_code == 200
    first = await client.get(path, headers=me)
    assert (first.headers["x-cache"], first.json()["data"]) == ("MISS", '{"title":"v1"}')
    restartable.server.kill()
    # Redis down, the gateway fails open: the write lands, its invalidation cannot.
    assert (await client.patch(path, headers=me, content=b'{"title":"v2"}')).status_code == 200
    await restartable.back()
    fresh = await restartable.bearer_after_loss(owner)
    for _ in range(3):
        reply = await client.get(path, headers=fresh)
        assert reply.status_code == 200
        assert reply.json()["data"] == '{"title":"v2"}'
    assert reply.headers["x-cache"] == "HIT"  # cached again, under the new epoch
