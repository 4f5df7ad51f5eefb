"""Issue 12 item 6: requests with bad tokens, /readyz and /openapi.json are rate limited per IP.

Before: a refused token answered 401 before any limit was counted, and the paths outside the API
(/readyz pings Redis and Kafka, /openapi.json merges the services' documents) were never limited,
so one address could send them without bound. Now a refused token counts under its route's
per-IP policy (api-ip) and the paths outside the API under meta-ip; /livez stays unlimited.
"""

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from gateway.settings import LimitPolicy
from tests.support.gateway import gateway_client, gateway_settings
from tests.support.servers import EchoUpstream
from tests.support.tokens import SigningKey

LIMIT = 4
POLICIES = (
    LimitPolicy(name="api-ip", limit=LIMIT, window_s=60, scope="api", key="ip"),
    LimitPolicy(name="meta-ip", limit=LIMIT, window_s=60, scope="meta", key="ip"),
)


@dataclass
class Edge:
    client: httpx.AsyncClient
    upstream: EchoUpstream
    key: SigningKey


@pytest.fixture(scope="module")
async def edge() -> AsyncIterator[Edge]:
    key = SigningKey.generate()
    upstream = await EchoUpstream("tasks").start()
    settings = gateway_settings(
        f"gwe{uuid.uuid4().hex[:10]}",
        key,
        upstream.url,
        rate_limits=POLICIES,
        # The test speaks for many clients: each test's own address, in X-Forwarded-For.
        trusted_proxies=("127.0.0.1",),
    )
    try:
        async with gateway_client(settings) as client:
            yield Edge(client, upstream, key)
    finally:
        await upstream.stop()


def address() -> dict[str, str]:
    """A client address of its own (each test's budget is untouched by the others)."""
    n = uuid.uuid4().int
    return {"X-Forwarded-For": f"10.{n % 256}.{(n >> 8) % 256}.{(n >> 16) % 256}"}


def assert_limited(reply: httpx.Response) -> None:
    assert reply.status_code == 429, reply.text
    assert reply.headers["content-type"] == "application/problem+json"
    assert int(reply.headers["retry-after"]) >= 1


@pytest.mark.parametrize(
    "authorization",
    ["Bearer not.a.jwt", "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.", None],
    ids=["garbage", "alg-none", "missing"],
)
async def test_bad_token_requests_from_one_address_are_limited(
    edge: Edge, authorization: str | None
) -> None:
    client = address()
    headers = {**client, **({"Authorization": authorization} if authorization else {})}
    hits = edge.upstream.hits["/api/tasks"]
    for _ in range(LIMIT):
        refused = await edge.client.get("/api/tasks", headers=headers)
        assert refused.status_code == 401
        assert refused.headers["ratelimit-policy"] == f'"api-ip";q={LIMIT};w=60'
    assert_limited(await edge.client.get("/api/tasks", headers=headers))
    assert edge.upstream.hits["/api/tasks"] == hits  # none of them reached the service
    # The address's budget is spent for good tokens too; another address is untouched.
    token, _ = edge.key.mint("u1")
    good = {"Authorization": f"Bearer {token}"}
    assert_limited(await edge.client.get("/api/tasks", headers={**good, **client}))
    other = await edge.client.get("/api/tasks", headers={**good, **address()})
    assert other.status_code == 200


@pytest.mark.parametrize("path", ["/readyz", "/openapi.json", "/docs", "/asyncapi.json"])
async def test_probes_and_docs_are_limited_per_address(edge: Edge, path: str) -> None:
    client = address()
    for _ in range(LIMIT):
        served = await edge.client.get(path, headers=client)
        assert served.status_code != 429
    limited = await edge.client.get(path, headers=client)
    assert_limited(limited)
    assert limited.headers["x-frame-options"] == "SAMEORIGIN"  # the edge headers, as always
    assert (await edge.client.get(path, headers=address())).status_code != 429


async def test_liveness_is_never_limited(edge: Edge) -> None:
    client = address()
    for _ in range(3 * LIMIT):
        assert (await edge.client.get("/livez", headers=client)).status_code == 200
