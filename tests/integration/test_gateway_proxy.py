"""The gateway as a proxy: routing, edge JWT, request ids, security headers, errors, deadlines."""

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from aiohttp import web

from gateway.headers import DEFAULT_CSP, HELMET_HEADERS
from gateway.settings import GatewaySettings
from tests.support.gateway import gateway_client, gateway_settings, metrics_url, serve_gateway
from tests.support.infra import free_port
from tests.support.servers import EchoUpstream
from tests.support.tokens import SigningKey

pytestmark = pytest.mark.integration

ORIGIN = "https://app.taskbus.example"


@dataclass
class Stack:
    url: str
    key: SigningKey
    auth: EchoUpstream
    tasks: EchoUpstream
    notifier: EchoUpstream
    client: httpx.AsyncClient
    metrics: str  # the URL of the gateway's metrics listener

    def bearer(self, user: str | None = None) -> dict[str, str]:
        token, _ = self.key.mint(user or uuid.uuid4().hex)
        return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
async def stack() -> AsyncIterator[Stack]:
    key = SigningKey.generate()
    auth, tasks, notifier = [await EchoUpstream(n).start() for n in ("auth", "tasks", "notifier")]
    prefix = f"gwp{uuid.uuid4().hex[:10]}"
    settings = gateway_settings(
        prefix,
        key,
        tasks.url,
        auth_url=auth.url,
        notifier_url=notifier.url,
        tasks_timeout_s=1.0,
        max_body_bytes=1024,
        cors_origins=(ORIGIN,),
    )
    try:
        async with (
            serve_gateway(settings) as url,
            httpx.AsyncClient(base_url=url, timeout=10) as client,
        ):
            yield Stack(url, key, auth, tasks, notifier, client, metrics_url(settings))
    finally:
        for upstream in (auth, tasks, notifier):
            await upstream.stop()


async def raw_status(base_url: str, path: str) -> int:
    """Send a GET with `path` byte for byte (HTTP clients normalise dot segments away)."""
    host, port = base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    status_line = await reader.readline()
    writer.close()
    await writer.wait_closed()
    return int(status_line.split()[1])


def assert_helmet(response: httpx.Response) -> None:
    assert response.headers["content-security-policy"] == DEFAULT_CSP
    for name, value in HELMET_HEADERS:
        assert response.headers[name.decode()] == value.decode(), name
    assert "server" not in response.headers
    assert "x-powered-by" not in response.headers


@pytest.mark.parametrize(
    ("path", "service"),
    [
        ("/api/auth/me", "auth"),
        ("/.well-known/jwks.json", "auth"),
        ("/api/tasks", "tasks"),
        ("/api/tasks/abc/comments", "tasks"),
        ("/api/notifications/preferences", "notifier"),
    ],
)
async def test_routes_reach_their_service_with_path_and_query_unchanged(
    stack: Stack, path: str, service: str
) -> None:
    response = await stack.client.get(f"{path}?b=2&a=1", headers=stack.bearer())
    assert response.status_code == 200
    seen = response.json()
    assert (seen["service"], seen["path"], seen["query"]) == (service, path, "b=2&a=1")


async def test_authorization_request_id_and_traceparent_go_upstream(stack: Stack) -> None:
    headers = {
        **stack.bearer(),
        "X-Request-ID": "req-123",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    }
    response = await stack.client.get("/api/tasks", headers=headers)
    seen = response.json()["headers"]
    assert seen["authorization"] == headers["Authorization"]
    assert seen["x-request-id"] == "req-123"
    assert response.headers["x-request-id"] == "req-123"
    trace = seen["traceparent"].split("-")
    assert trace[1] == "0af7651916cd43dd8448eb211c80319c"
    assert trace[2] != "b7ad6b7169203331"  # the gateway's hop gets its own parent id


async def test_a_request_id_is_generated_when_absent(stack: Stack) -> None:
    response = await stack.client.get("/api/tasks", headers=stack.bearer())
    generated = response.headers["x-request-id"]
    assert len(generated) == 32
    assert response.json()["headers"]["x-request-id"] == generated


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer not-a-jwt", "Basic dXNlcjpwdw==", "expired", "foreign-key"],
)
async def test_protected_routes_refuse_without_a_valid_token_uniformly(
    stack: Stack, authorization: str | None
) -> None:
    if authorization == "expired":
        token, _ = stack.key.mint("u1", ttl_s=60, now=time.time() - 3600)
        authorization = f"Bearer {token}"
    elif authorization == "foreign-key":
        token, _ = SigningKey.generate().mint("u1")
        authorization = f"Bearer {token}"
    before = stack.tasks.hits["/api/tasks"]
    headers = {"Authorization": authorization} if authorization else {}
    response = await stack.client.get("/api/tasks", headers=headers)
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    # The same 401 as every service's (common.tokens.verify_bearer).
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["detail"] == "missing or invalid access token"
    assert stack.tasks.hits["/api/tasks"] == before  # refused at the edge
    assert_helmet(response)


@pytest.mark.parametrize(
    "path",
    ["/api/auth/login", "/api/auth/register", "/api/auth/refresh", "/api/auth/password-reset"],
)
async def test_public_auth_routes_need_no_token(stack: Stack, path: str) -> None:
    response = await stack.client.post(path, json={"email": f"{uuid.uuid4().hex}@x.io"})
    assert response.status_code == 200
    assert response.json()["body"].startswith('{"email"')


async def test_every_status_carries_the_helmet_set(stack: Stack) -> None:
    auth = stack.bearer()
    responses = [
        await stack.client.get("/api/tasks", headers=auth),
        await stack.client.get("/api/tasks/err", headers={**auth, "x-echo-status": "500"}),
        await stack.client.get("/api/nowhere", headers=auth),
        await stack.client.get("/nowhere"),
        await stack.client.get("/livez"),
        await stack.client.post("/api/tasks", headers=auth, content=b"x" * 2048),
    ]
    assert [r.status_code for r in responses] == [200, 500, 404, 404, 200, 413]
    for response in responses:
        assert_helmet(response)


async def test_oversized_body_is_refused_with_413_before_the_service(stack: Stack) -> None:
    before = sum(stack.tasks.hits.values())
    response = await stack.client.post("/api/tasks", headers=stack.bearer(), content=b"x" * 1025)
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"
    assert sum(stack.tasks.hits.values()) == before


async def test_unknown_routes_answer_404_problem(stack: Stack) -> None:
    for path in ("/api/unknown", "/not-here"):
        response = await stack.client.get(path, headers=stack.bearer())
        assert response.status_code == 404
        assert response.headers["content-type"] == "application/problem+json"


async def test_upstream_timeout_answers_504_within_the_deadline(stack: Stack) -> None:
    started = time.monotonic()
    response = await stack.client.get("/api/tasks/slow?s=5", headers=stack.bearer())
    elapsed = time.monotonic() - started
    assert response.status_code == 504
    assert response.headers["content-type"] == "application/problem+json"
    assert elapsed < 4  # the 1 s deadline, not the service's 5 s
    assert_helmet(response)


async def test_upstream_down_answers_503_problem() -> None:
    key = SigningKey.generate()
    dead = f"http://127.0.0.1:{free_port()}"
    settings = gateway_settings(f"gwd{uuid.uuid4().hex[:10]}", key, dead)
    async with gateway_client(settings) as client:
        token, _ = key.mint("u1")
        response = await client.get("/api/tasks", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 503
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["detail"] == "tasks is unavailable"
        assert_helmet(response)
        docs = await client.get("/openapi.json")
        assert docs.status_code == 200
        assert docs.json()["info"]["x-taskbus-unavailable"] == ["auth", "notifier", "tasks"]


async def test_cors_allows_only_listed_origins(stack: Stack) -> None:
    preflight = {"Origin": ORIGIN, "Access-Control-Request-Method": "PATCH"}
    allowed = await stack.client.options("/api/tasks/1", headers=preflight)
    assert allowed.status_code == 204
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    assert "PATCH" in allowed.headers["access-control-allow-methods"]
    assert allowed.headers["access-control-allow-credentials"] == "true"
    assert_helmet(allowed)
    refused = await stack.client.options(
        "/api/tasks/1", headers={**preflight, "Origin": "https://evil.example"}
    )
    assert refused.status_code == 403
    assert "access-control-allow-origin" not in refused.headers
    simple = await stack.client.get("/api/tasks", headers={**stack.bearer(), "Origin": ORIGIN})
    assert simple.headers["access-control-allow-origin"] == ORIGIN
    assert "ETag" in simple.headers["access-control-expose-headers"]


async def test_docs_metrics_and_probes(stack: Stack) -> None:
    ui = await stack.client.get("/docs")
    assert ui.status_code == 200
    assert "swagger-ui" in ui.text
    asyncapi = (await stack.client.get("/asyncapi.json")).json()
    assert asyncapi["asyncapi"].startswith("3.")
    addresses = {channel["address"] for channel in asyncapi["channels"].values()}
    # Every topic of Taskbus (common/asyncapi.py), under this deployment's prefix.
    assert {a.split(".", 1)[1] for a in addresses} >= {
        "taskbus.tasks",
        "taskbus.users",
        "taskbus.commands.{producer}",
        "taskbus.answers.{producer}",
        "taskbus.notifier.dlq",
    }
    assert "task.created.v1" in asyncapi["components"]["messages"]
    ready = await stack.client.get("/readyz")
    assert ready.json()["checks"] == {"redis": "ok", "kafka": "ok"}
    await stack.client.get("/api/tasks", headers=stack.bearer())
    metrics = await stack.client.get(stack.metrics)
    # As in production, common.metrics counts requests, labelled by the gateway's route template.
    wanted = 'taskbus_http_requests_total{method="GET",route="/api/tasks*",service="gateway"'
    assert wanted + ',status="200"}' in metrics.text


async def test_keys_come_from_the_jwks_url_and_its_outage_is_a_503() -> None:
    key = SigningKey.generate()
    jwks_app = web.Application()

    async def jwks(_: web.Request) -> web.Response:
        return web.json_response(key.jwks())

    jwks_app.router.add_get("/.well-known/jwks.json", jwks)
    runner = web.AppRunner(jwks_app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    upstream = await EchoUpstream("tasks").start()

    def keys_at(jwks_port: int) -> GatewaySettings:
        jwks_url = f"http://127.0.0.1:{jwks_port}/.well-known/jwks.json"
        prefix = f"gwk{uuid.uuid4().hex[:8]}"
        return gateway_settings(prefix, key, upstream.url, jwks_json=None, jwks_url=jwks_url)

    live, dead = keys_at(port), keys_at(free_port())  # nothing listens on the second
    token, _ = key.mint("u1")
    auth = {"Authorization": f"Bearer {token}"}
    try:
        async with (
            serve_gateway(live) as live_url,
            serve_gateway(dead) as dead_url,
            httpx.AsyncClient(timeout=10) as client,
        ):
            assert (await client.get(f"{live_url}/api/tasks", headers=auth)).status_code == 200
            down = await client.get(f"{dead_url}/api/tasks", headers=auth)
            assert down.status_code == 503
            assert down.headers["content-type"] == "application/problem+json"
            assert_helmet(down)
    finally:
        await upstream.stop()
        await runner.cleanup()


async def test_percent_encoding_reaches_the_service_and_dot_segments_do_not(stack: Stack) -> None:
    encoded = await stack.client.get("/api/tasks/a%2Fb?x=%20", headers=stack.bearer())
    assert encoded.json()["raw_path"] == "/api/tasks/a%2Fb?x=%20"
    assert encoded.json()["headers"]["x-forwarded-host"] == stack.url.removeprefix("http://")
    before = len(stack.auth.requests) + len(stack.tasks.requests)
    for path in ("/api/auth/password-reset/../../tasks", "/api/tasks/./x", "/api/tasks/.."):
        assert await raw_status(stack.url, path) == 400
    assert len(stack.auth.requests) + len(stack.tasks.requests) == before


async def test_metrics_count_cache_results_and_limiter_decisions(stack: Stack) -> None:
    auth = stack.bearer()
    path = f"/api/tasks/{uuid.uuid4().hex}"
    await stack.client.get(path, headers=auth)
    await stack.client.get(path, headers=auth)
    text = (await stack.client.get(stack.metrics)).text
    assert 'taskbus_gateway_cache_total{result="hit"}' in text
    assert 'taskbus_gateway_cache_total{result="miss"}' in text
    decision = 'taskbus_gateway_ratelimit_decisions_total{decision="admitted",policy="api-user"}'
    assert decision in text


async def test_oversized_request_headers_are_refused_with_431_before_any_token_work(
    stack: Stack,
) -> None:
    before = stack.tasks.hits["/api/tasks"]
    huge = {"Authorization": "Bearer " + "a" * 20_000}
    refused = await stack.client.get("/api/tasks", headers=huge)
    assert refused.status_code == 431
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["status"] == 431
    assert_helmet(refused)
    many = {f"x-pad-{i}": "p" * 1000 for i in range(20)}
    assert (await stack.client.get("/healthz", headers=many)).status_code == 431
    assert stack.tasks.hits["/api/tasks"] == before
    within = {**stack.bearer(), "x-pad": "p" * 8000}
    assert (await stack.client.get("/api/tasks", headers=within)).status_code == 200


async def test_a_redirect_to_the_service_itself_leaves_as_a_path_on_the_gateway(
    stack: Stack,
) -> None:
    own = {**stack.bearer(), "x-echo-status": "307", "x-echo-location": "{origin}/api/tasks?a=1"}
    redirect = await stack.client.get("/api/tasks/", headers=own)
    assert redirect.status_code == 307
    assert redirect.headers["location"] == "/api/tasks?a=1"
    assert stack.tasks.url.removeprefix("http://") not in str(redirect.headers)
    elsewhere = {**own, "x-echo-location": "https://docs.example/tasks"}
    kept = await stack.client.get("/api/tasks/", headers=elsewhere)
    assert kept.headers["location"] == "https://docs.example/tasks"
