"""A Redis that comes back empty (no persistence, a failover): revoked tokens stay refused and no
cached read from before the restart is served."""

import uuid
from collections.abc import AsyncIterator

import pytest

from tests.support.gateway import Restartable, publish_revocation, restartable_gateway
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


@pytest.fixture
async def restartable() -> AsyncIterator[Restartable]:
    async with restartable_gateway("gwr") as stack:
        yield stack


async def test_a_revoked_token_stays_refused_after_redis_restarts_empty(
    restartable: Restartable,
) -> None:
    who = uuid.uuid4().hex
    revoked = restartable.bearer(who, "s-gone")
    assert (await restartable.client.get("/api/tasks", headers=revoked)).status_code == 200
    await publish_revocation(restartable.broker, restartable.settings, who, "s-gone")

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
