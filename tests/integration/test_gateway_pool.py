"""A pooled keep-alive connection the service closes under a request: one retry on a fresh
connection when sending twice is safe, else a 502 problem."""

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from tests.support.gateway import gateway_client, gateway_settings
from tests.support.servers import OneShotUpstream
from tests.support.tokens import SigningKey

pytestmark = pytest.mark.integration


@dataclass
class Pooled:
    upstream: OneShotUpstream
    client: httpx.AsyncClient
    auth: dict[str, str]


@pytest.fixture
async def pooled() -> AsyncIterator[Pooled]:
    key = SigningKey.generate()
    upstream = await OneShotUpstream().start()
    settings = gateway_settings(f"gwk{uuid.uuid4().hex[:10]}", key, upstream.url)
    token, _ = key.mint(uuid.uuid4().hex)
    try:
        async with gateway_client(settings) as client:
            yield Pooled(upstream, client, {"Authorization": f"Bearer {token}"})
    finally:
        await upstream.stop()


async def test_idempotent_requests_never_fail_on_a_closed_pooled_connection(
    pooled: Pooled,
) -> None:
    for method in ("GET", "PUT", "DELETE", "GET", "GET"):
        reply = await pooled.client.request(method, "/api/tasks/t1", headers=pooled.auth)
        assert reply.status_code == 200, (method, reply.text)
    # Every request after the first met a pooled connection the upstream closed under it.
    assert len(pooled.upstream.received) > 5


async def test_a_write_with_an_idempotency_key_is_retried_and_one_without_is_a_502(
    pooled: Pooled,
) -> None:
    assert (await pooled.client.get("/api/tasks", headers=pooled.auth)).status_code == 200
    keyed = {**pooled.auth, "Idempotency-Key": uuid.uuid4().hex}
    retried = await pooled.client.post("/api/tasks", headers=keyed, json={"title": "t"})
    assert retried.status_code == 200
    assert [line.split()[0] for line in pooled.upstream.received].count("POST") == 2
    # The pool again holds a connection that has served its one answer.
    bare = await pooled.client.post("/api/tasks", headers=pooled.auth, json={"title": "t"})
    assert bare.status_code == 502
    assert bare.headers["content-type"] == "application/problem+json"
    assert [line.split()[0] for line in pooled.upstream.received].count("POST") == 3
