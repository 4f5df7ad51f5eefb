"""Two real gateway processes behind one Redis: limits are exact across them, caches agree."""

import asyncio
import signal
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import orjson
import pytest

from tests.support.gateway import gateway_env
from tests.support.infra import STATE_DIR, free_port, infra_env
from tests.support.processes import ServiceProcess
from tests.support.servers import EchoUpstream
from tests.support.tokens import SigningKey

pytestmark = pytest.mark.e2e

API_LIMIT = 25
LOGIN_LIMIT = 10
POLICIES = [
    {"name": "login-ip", "limit": LOGIN_LIMIT, "window_s": 900, "scope": "login", "key": "ip"},
    {"name": "api-user", "limit": API_LIMIT, "window_s": 300, "scope": "api", "key": "user"},
]


@dataclass
class Pair:
    key: SigningKey
    upstream: EchoUpstream
    urls: tuple[str, str]
    client: httpx.AsyncClient


@pytest.fixture(scope="module")
async def pair() -> AsyncIterator[Pair]:
    key = SigningKey.generate()
    upstream = await EchoUpstream("svc").start()
    prefix = f"gw2{uuid.uuid4().hex[:10]}"
    env = {
        **infra_env(prefix),
        **gateway_env(prefix, key, upstream.url),
        "GATEWAY_RATE_LIMITS": orjson.dumps(POLICIES).decode(),
    }
    procs = []
    for n in (1, 2):
        port = free_port()
        log = STATE_DIR / "log" / "tests" / f"{prefix}-gateway{n}.log"
        # Each process has its metrics listener of its own as well.
        own = {"GATEWAY_PORT": str(port), "GATEWAY_METRICS_PORT": str(free_port())}
        procs.append(ServiceProcess("gateway", port, {**env, **own}, log).start())
    try:
        for proc in procs:
            await asyncio.to_thread(proc.wait_ready)
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:
            yield Pair(key, upstream, (procs[0].url, procs[1].url), client)
    finally:
        # SIGTERM runs the lifespan shutdown (Kafka consumers, pools); uvicorn then re-raises it.
        codes = [await asyncio.to_thread(proc.stop) for proc in procs]
        await upstream.stop()
        assert codes == [-signal.SIGTERM] * 2
        assert all("Application shutdown complete." in proc.log_tail() for proc in procs)


async def test_concurrent_clients_across_two_processes_get_exactly_the_api_limit(
    pair: Pair,
) -> None:
    token, _ = pair.key.mint(uuid.uuid4().hex)
    headers = {"Authorization": f"Bearer {token}", "Cache-Control": "no-cache"}
    requests = [
        pair.client.get(f"{pair.urls[i % 2]}/api/tasks", headers=headers) for i in range(80)
    ]
    codes = [r.status_code for r in await asyncio.gather(*requests)]
    assert codes.count(200) == API_LIMIT
    assert codes.count(429) == 80 - API_LIMIT


async def test_concurrent_logins_across_two_processes_get_exactly_the_login_limit(
    pair: Pair,
) -> None:
    requests = [
        pair.client.post(
            f"{pair.urls[i % 2]}/api/auth/login", json={"email": f"u{i}@x.io", "password": "p"}
        )
        for i in range(40)
    ]
    responses = await asyncio.gather(*requests)
    codes = [r.status_code for r in responses]
    assert codes.count(200) == LOGIN_LIMIT
    assert codes.count(429) == 40 - LOGIN_LIMIT
    refused = next(r for r in responses if r.status_code == 429)
    assert int(refused.headers["retry-after"]) > 0


async def test_both_processes_share_the_cache_and_its_invalidation(pair: Pair) -> None:
    token, _ = pair.key.mint(uuid.uuid4().hex)
    me = {"Authorization": f"Bearer {token}"}
    path = f"/api/tasks/{uuid.uuid4().hex}"
    first, second = pair.urls
    miss = await pair.client.get(f"{first}{path}", headers=me)
    hit = await pair.client.get(f"{second}{path}", headers=me)
    assert (miss.headers["x-cache"], hit.headers["x-cache"]) == ("MISS", "HIT")
    assert hit.headers["etag"] == miss.headers["etag"]
    assert "server" not in hit.headers
    assert hit.headers["x-frame-options"] == "SAMEORIGIN"
    assert (await pair.client.patch(f"{first}{path}", headers=me, json={"t": 1})).status_code == 200
    after = await pair.client.get(f"{second}{path}", headers=me)
    assert after.headers["x-cache"] == "MISS"
    assert after.json()["data"] == '{"t":1}'
    assert pair.upstream.hits[path] == 3
