"""Rate limits in Redis: login per IP and per account, API per user, draft-11 headers, 429 problems,
trusted-proxy client addresses, and the configured mode when Redis dies."""

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import redis

from gateway.settings import GatewaySettings, LimitPolicy
from tests.support.gateway import gateway_client, gateway_settings, serve_gateway
from tests.support.redis_server import RedisServer
from tests.support.servers import EchoUpstream
from tests.support.tokens import SigningKey

pytestmark = pytest.mark.integration

POLICIES = (
    LimitPolicy(name="login-ip", limit=10, window_s=900, scope="login", key="ip"),
    LimitPolicy(name="login-account", limit=10, window_s=900, scope="login", key="account"),
    LimitPolicy(name="api-user", limit=5, window_s=60, scope="api", key="user"),
)


@dataclass
class Stack:
    key: SigningKey
    upstream: EchoUpstream
    client: httpx.AsyncClient


@pytest.fixture(scope="module")
async def stack() -> AsyncIterator[Stack]:
    key = SigningKey.generate()
    upstream = await EchoUpstream("svc").start()
    settings = gateway_settings(
        f"gwr{uuid.uuid4().hex[:10]}",
        key,
        upstream.url,
        rate_limits=POLICIES,
        trusted_proxies=("127.0.0.1",),
    )
    try:
        async with gateway_client(settings) as client:
            yield Stack(key, upstream, client)
    finally:
        await upstream.stop()


def client_ip() -> str:
    """A unique documentation-range address per test (the LB at 127.0.0.1 is trusted)."""
    n = uuid.uuid4().int
    return f"198.51.{n % 250}.{(n >> 8) % 250 + 1}"


async def login(stack: Stack, ip: str, email: str) -> httpx.Response:
    return await stack.client.post(
        "/api/auth/login",
        headers={"X-Forwarded-For": f"203.0.113.9, {ip}"},
        json={"email": email, "password": "wrong"},
    )


async def test_login_allows_ten_attempts_per_ip_then_429_with_headers(stack: Stack) -> None:
    ip = client_ip()
    codes = [(await login(stack, ip, f"{uuid.uuid4().hex}@x.io")).status_code for _ in range(10)]
    assert codes == [200] * 10
    refused = await login(stack, ip, f"{uuid.uuid4().hex}@x.io")
    assert refused.status_code == 429
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["status"] == 429
    assert refused.headers["ratelimit-policy"] == (
        '"login-ip";q=10;w=900, "login-account";q=10;w=900'
    )
    ip_state, account_state = refused.headers["ratelimit"].split(", ")
    assert ip_state.startswith('"login-ip";r=0;t=')
    assert account_state.startswith('"login-account";r=10;t=')
    reset = int(ip_state.rsplit("t=", 1)[1])
    assert 0 < reset <= 900
    assert int(refused.headers["retry-after"]) == reset
    assert refused.headers["x-frame-options"] == "SAMEORIGIN"
    # Another address is not affected.
    assert (await login(stack, client_ip(), "someone@x.io")).status_code == 200


async def test_login_limits_each_account_across_addresses(stack: Stack) -> None:
    email = f"{uuid.uuid4().hex}@example.com"
    variants = [email, email.upper(), f"  {email} "]
    codes = [(await login(stack, client_ip(), variants[i % 3])).status_code for i in range(10)]
    assert codes == [200] * 10
    refused = await login(stack, client_ip(), email.title())
    assert refused.status_code == 429
    assert '"login-account";r=0' in refused.headers["ratelimit"]


async def test_remaining_counts_down_on_admitted_requests(stack: Stack) -> None:
    ip = client_ip()
    remaining = []
    for _ in range(3):
        response = await login(stack, ip, f"{uuid.uuid4().hex}@x.io")
        remaining.append(response.headers["ratelimit"].split(";")[1])
    assert remaining == ["r=9", "r=8", "r=7"]


async def test_api_limit_is_per_user(stack: Stack) -> None:
    token, _ = stack.key.mint(uuid.uuid4().hex)
    other, _ = stack.key.mint(uuid.uuid4().hex)
    me = {"Authorization": f"Bearer {token}", "Cache-Control": "no-cache"}
    codes = [(await stack.client.get("/api/tasks", headers=me)).status_code for _ in range(6)]
    assert codes == [200] * 5 + [429]
    ok = await stack.client.get("/api/tasks", headers={"Authorization": f"Bearer {other}"})
    assert ok.status_code == 200
    assert ok.headers["ratelimit-policy"] == '"api-user";q=5;w=60'


async def test_forwarded_for_is_ignored_from_untrusted_peers() -> None:
    key = SigningKey.generate()
    upstream = await EchoUpstream("svc").start()
    policies = (LimitPolicy(name="login-ip", limit=2, window_s=60, scope="login", key="ip"),)
    settings = gateway_settings(
        f"gwu{uuid.uuid4().hex[:10]}", key, upstream.url, rate_limits=policies
    )
    try:
        async with gateway_client(settings) as client:
            codes = [
                (
                    await client.post(
                        "/api/auth/login", headers={"X-Forwarded-For": client_ip()}, json={}
                    )
                ).status_code
                for _ in range(3)
            ]
            assert codes == [200, 200, 429]
            seen = upstream.requests[-1]["headers"]["x-forwarded-for"]
            assert seen == "127.0.0.1"
    finally:
        await upstream.stop()


@dataclass
class OwnRedis:
    """A gateway's surroundings with a Redis of its own, to kill or flush."""

    server: RedisServer
    key: SigningKey
    upstream: EchoUpstream
    auth: dict[str, str]

    def settings(self, prefix: str, **overrides: Any) -> GatewaySettings:
        return gateway_settings(
            prefix,
            self.key,
            self.upstream.url,
            redis_url=self.server.url,
            rate_limits=POLICIES,
            **overrides,
        )


@pytest.fixture
async def own_redis() -> AsyncIterator[OwnRedis]:
    server = RedisServer().start()
    key = SigningKey.generate()
    upstream = await EchoUpstream("svc").start()
    token, _ = key.mint(uuid.uuid4().hex)
    try:
        yield OwnRedis(server, key, upstream, {"Authorization": f"Bearer {token}"})
    finally:
        await upstream.stop()
        server.kill()


async def test_redis_down_fails_open_or_closed_as_configured(own_redis: OwnRedis) -> None:
    auth = own_redis.auth
    open_gateway = own_redis.settings(f"gwo{uuid.uuid4().hex[:8]}", redis_failure_mode="open")
    closed_gateway = own_redis.settings(f"gwx{uuid.uuid4().hex[:8]}", redis_failure_mode="closed")
    async with (
        serve_gateway(open_gateway) as open_url,
        serve_gateway(closed_gateway) as closed_url,
        httpx.AsyncClient(timeout=10) as client,
    ):
        for base in (open_url, closed_url):
            healthy = await client.get(f"{base}/api/tasks", headers=auth)
            assert healthy.status_code == 200
            assert "ratelimit" in healthy.headers
        own_redis.server.kill()
        open_reply, closed_reply = await asyncio.gather(
            client.get(f"{open_url}/api/tasks", headers=auth),
            client.get(f"{closed_url}/api/tasks", headers=auth),
        )
        assert open_reply.status_code == 200
        assert open_reply.headers["x-cache"] == "BYPASS"
        assert "ratelimit" not in open_reply.headers
        assert closed_reply.status_code == 503
        assert closed_reply.headers["content-type"] == "application/problem+json"
        assert closed_reply.headers["retry-after"] == "1"
        assert closed_reply.headers["strict-transport-security"].startswith("max-age=")


async def test_the_gate_reloads_its_script_after_redis_forgets_it(own_redis: OwnRedis) -> None:
    auth = {**own_redis.auth, "Cache-Control": "no-cache"}
    async with gateway_client(own_redis.settings(f"gwf{uuid.uuid4().hex[:8]}")) as client:
        first = await client.get("/api/tasks", headers=auth)
        assert '"api-user";r=4;' in first.headers["ratelimit"]
        redis.Redis.from_url(own_redis.server.url).script_flush()
        second = await client.get("/api/tasks", headers=auth)
        assert second.status_code == 200
        assert '"api-user";r=3;' in second.headers["ratelimit"]
