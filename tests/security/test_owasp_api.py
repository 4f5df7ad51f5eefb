"""OWASP API Security Top 10 (2023) items not covered elsewhere, against the real stack.

API1 (BOLA) is tests/security/test_bola_matrix.py, API2 (broken authentication) the JWT matrix
and the login, revocation and reset tests; docs/security.md maps every item to its control and
test. Here: API3 property-level authorization (mass assignment), API4 resource consumption,
API5 function-level authorization, API7 SSRF, API8 misconfiguration, API9 inventory.
"""

import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import pytest

from common.problems import PROBLEM_JSON
from gateway.routes import TABLE
from gateway.settings import GatewaySettings
from services.auth.keys import generate_key
from tests.integration.test_gateway_proxy import assert_helmet
from tests.security.test_bola_matrix import NO_CACHE, operations
from tests.support.auth import TOKEN_DOORS, bearer, register, signing_keys_env
from tests.support.servers import EchoUpstream
from tests.support.system import running_system
from tests.support.tokens import SigningKey

pytestmark = pytest.mark.e2e
DOORS = TOKEN_DOORS
# What a trace, a framework's debug page or a path on the host looks like in a body.
OVERFLOW = {"title": "t", "due_at": "9999-12-31T23:59:59-23:59"}
LEAK = re.compile(r"Traceback|File \"|\.py\b|site-packages|/work/|Exception|pydantic\.dev")


@dataclass
class Stack:
    gateway: httpx.AsyncClient
    urls: dict[str, str]
    spec: dict[str, Any]
    key: SigningKey
    auth: dict[str, str]  # a registered user's Authorization header
    user_id: str


@pytest.fixture(scope="module")
async def stack() -> AsyncIterator[Stack]:
    prefix = f"owasp{uuid.uuid4().hex[:10]}"
    auth_key = generate_key(f"{prefix}-key")
    env = {"AUTH_SIGNING_KEYS": signing_keys_env(auth_key)}
    async with running_system(prefix, ["auth", "tasks", "notifier", "gateway"], **env) as procs:
        urls = {name: proc.url for name, proc in procs.items()}
        async with httpx.AsyncClient(base_url=urls["gateway"], timeout=30) as client:
            spec = (await client.get("/openapi.json")).json()
            user = await register(client)
            key = SigningKey(auth_key.kid, auth_key.private_key)
            yield Stack(client, urls, spec, key, bearer(user["access_token"]), user["user"]["id"])


def _assert_problem(answer: httpx.Response, status: int) -> None:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == PROBLEM_JSON
    assert answer.json()["status"] == status


# --- API3: broken object property level authorization (mass assignment) ---------------------

# Fields the server owns: a client naming one is refused (422), never obeyed or ignored.
SERVER_OWNED = {
    "id": "a" * 24,
    "_id": "a" * 24,
    "owner": "someone-else",
    "Owner": "someone-else",
    "created_at": "2000-01-01T00:00:00Z",
    "updated_at": "2000-01-01T00:00:00Z",
    "completed_at": "2000-01-01T00:00:00Z",
    "version": 99,
    "outbox": [],
    "outbox_pending": True,
}


@pytest.mark.parametrize("field", list(SERVER_OWNED))
async def test_server_owned_task_fields_are_refused_on_create_and_patch(
    stack: Stack, field: str
) -> None:
    client, auth = stack.gateway, {**stack.auth, **NO_CACHE}
    created = await client.post("/api/tasks", json={"title": "mine"}, headers=auth)
    assert created.status_code == 201
    task = created.json()
    before = (await client.get("/api/tasks/stats", headers=auth)).json()

    body = {"title": "smuggled", field: SERVER_OWNED[field]}
    _assert_problem(await client.post("/api/tasks", json=body, headers=auth), 422)
    assert (await client.get("/api/tasks/stats", headers=auth)).json() == before
    patch = {field: SERVER_OWNED[field]}
    refused = await client.patch(f"/api/tasks/{task['id']}", json=patch, headers=auth)
    _assert_problem(refused, 422)
    assert field in refused.json()["detail"]  # names what was refused
    assert (await client.get(f"/api/tasks/{task['id']}", headers=auth)).json() == task


@pytest.mark.parametrize(
    ("path", "method", "body"),
    [
        ("/api/auth/me", "PATCH", {"email": "taken@example.com"}),
        ("/api/auth/me", "PATCH", {"id": "someone-else"}),
        ("/api/auth/me", "PATCH", {"role": "admin"}),
        ("/api/auth/me", "PATCH", {"password_hash": "$argon2id$v=19$x"}),
        ("/api/notifications/preferences", "PUT", {"reminders": False, "user_id": "x"}),
    ],
    ids=["me-email", "me-id", "me-role", "me-password-hash", "preferences-user-id"],
)
async def test_server_owned_account_fields_are_refused(
    stack: Stack, path: str, method: str, body: dict[str, Any]
) -> None:
    auth = {**stack.auth, **NO_CACHE}
    before = (await stack.gateway.get(path, headers=auth)).json()
    _assert_problem(await stack.gateway.request(method, path, json=body, headers=auth), 422)
    assert (await stack.gateway.get(path, headers=auth)).json() == before


# --- API4: unrestricted resource consumption ------------------------------------------------
# Also: tests/security/test_task_cap.py (stored tasks), test_rate_limit_edges.py and
# tests/integration/test_gateway_ratelimit.py (rates), test_gateway_proxy.py (413, 431 before
# the service), tests/e2e/test_tasks_api.py (the service's own 64 KiB body cap).


async def test_page_size_query_body_and_header_sizes_are_capped_at_the_gateway(
    stack: Stack,
) -> None:
    client, auth = stack.gateway, stack.auth
    assert (await client.get("/api/tasks?limit=100", headers=auth)).status_code == 200
    for query in ("limit=101", "limit=100000", "q=" + "x" * 101, "cursor=" + "c" * 513):
        _assert_problem(await client.get(f"/api/tasks?{query}", headers=auth), 422)
    tags = {"title": "t", "tags": [f"t{i}" for i in range(1000)]}
    _assert_problem(await client.post("/api/tasks", json=tags, headers=auth), 422)
    huge = (
        b'{"title": "' + b"x" * (GatewaySettings.model_fields["max_body_bytes"].default + 1) + b'"}'
    )
    json_type = {**auth, "Content-Type": "application/json"}
    _assert_problem(await client.post("/api/tasks", content=huge, headers=json_type), 413)
    padded = {**auth, **{f"x-pad-{i}": "p" * 1000 for i in range(20)}}
    _assert_problem(await client.get("/api/tasks", headers=padded), 431)


# --- API5: broken function level authorization ----------------------------------------------
# Taskbus has no admin role or admin routes; the functions are the documented operations.

PUBLIC_OPERATIONS = {
    ("POST", "/api/auth/register"),
    ("POST", "/api/auth/login"),
    ("POST", "/api/auth/refresh"),
    ("POST", "/api/auth/logout"),  # by refresh token: needs no access token
    ("POST", "/api/auth/password-reset"),
    ("POST", "/api/auth/password-reset/confirm"),
    ("GET", "/.well-known/jwks.json"),
}


async def test_every_api_operation_but_the_sign_in_ones_needs_a_token(stack: Stack) -> None:
    api = {op for op in operations(stack.spec) if TABLE.match(op[1]) is not None}
    public = {op for op in api if TABLE.match(op[1]).public}  # type: ignore[union-attr]
    assert public == PUBLIC_OPERATIONS  # a new public route is a decision, made here
    for method, template in sorted(api - public):
        path = re.sub(r"\{[^}]+\}", "0" * 24, template)
        _assert_problem(await stack.gateway.request(method, path, json={}), 401)


async def test_no_service_operation_is_reachable_through_the_gateway_undocumented(
    stack: Stack,
) -> None:
    documented = operations(stack.spec)
    async with httpx.AsyncClient(timeout=10) as http:
        for name in ("auth", "tasks", "notifier"):
            own = (await http.get(f"{stack.urls[name]}/openapi.json")).json()
            api = {op for op in operations(own) if TABLE.match(op[1]) is not None}
            assert api <= documented, (name, api - documented)
    # The services' own probes, metrics and docs are not under a proxied path.
    for path in ("/api/tasks/metrics", "/api/auth/metrics", "/api/notifications/metrics"):
        answer = await stack.gateway.get(path, headers=stack.auth)
        assert answer.status_code == 404, path
        assert "# HELP" not in answer.text


# --- API7: server side request forgery ------------------------------------------------------

_URL_FIELD = re.compile(r"url|uri|callback|webhook|redirect|link|host", re.IGNORECASE)


def _request_fields(spec: dict[str, Any]) -> set[str]:
    """Every parameter and request-body property name the spec lets a client send."""
    names = set()
    for item in spec["paths"].values():
        for op in item.values():
            names |= {p["name"] for p in op.get("parameters", [])}
    for schema in spec.get("components", {}).get("schemas", {}).values():
        names |= set(schema.get("properties", {}))
    return names


async def test_no_operation_takes_a_url_and_token_key_urls_are_never_fetched(
    stack: Stack,
) -> None:
    urlish = {name for name in _request_fields(stack.spec) if _URL_FIELD.search(name)}
    assert not urlish, f"a client-given URL is an SSRF vector; review and list here: {urlish}"
    canary = await EchoUpstream("canary").start()
    try:
        claims = jwt.decode(
            stack.auth["Authorization"].removeprefix("Bearer "),
            options={"verify_signature": False},
        )
        for header in ("jku", "x5u"):
            # Signed by the real key: only the key-location header is wrong.
            token = jwt.encode(
                claims,
                stack.key.private_key,
                "RS256",
                headers={"kid": stack.key.kid, "typ": "at+jwt", header: f"{canary.url}/keys"},
            )
            for door, path in DOORS.items():
                async with httpx.AsyncClient(base_url=stack.urls[door], timeout=10) as http:
                    _assert_problem(await http.get(path, headers=bearer(token)), 401)
        assert sum(canary.hits.values()) == 0, canary.requests
    finally:
        await canary.stop()


# --- API8: security misconfiguration --------------------------------------------------------
# Also: tests/integration/test_gateway_proxy.py (helmet set on 200/500/404/413, CORS),
# tests/security/test_parse_errors.py (uvicorn's own 400), test_metrics_listener.py.


async def test_every_kind_of_answer_carries_the_edge_headers_and_no_internals(
    stack: Stack,
) -> None:
    client, auth = stack.gateway, stack.auth
    json_type = {**auth, "Content-Type": "application/json"}
    task = (await client.post("/api/tasks", json={"title": "t"}, headers=auth)).json()
    stale = {**auth, "If-Match": '"99"'}
    answers = [
        (200, await client.get("/api/tasks", headers=auth)),
        (201, await client.post("/api/tasks", json={"title": "t"}, headers=auth)),
        (400, await client.get("/api/tasks?cursor=bm9wZQ.AAAA", headers=auth)),
        # Deep nesting must not surface a RecursionError.
        (400, await client.post("/api/tasks", content=b"[" * 30_000, headers=json_type)),
        (401, await client.get("/api/tasks")),
        (404, await client.get("/api/nowhere", headers=auth)),
        (404, await client.get(f"/api/tasks/{'0' * 24}", headers=auth)),
        (405, await client.put("/api/tasks", headers=auth)),
        (412, await client.patch(f"/api/tasks/{task['id']}", json={"title": "x"}, headers=stale)),
        (413, await client.post("/api/tasks", content=b"x" * 2_000_000, headers=json_type)),
        # The date overflow (once a 500 that broke the next writes): a 422 now.
        (422, await client.post("/api/tasks", json=OVERFLOW, headers=auth)),
        (431, await client.get("/api/tasks", headers={**auth, "x-pad": "p" * 20_000})),
    ]
    wrong = {"email": "x@example.com", "password": "wrong password"}
    for _ in range(10):  # the login-ip policy's budget (10 per 5 min) ...
        await client.post("/api/auth/login", json=wrong)
    answers.append((429, await client.post("/api/auth/login", json=wrong)))  # ... then 429
    for expected, answer in answers:
        assert answer.status_code == expected, answer.text
        assert_helmet(answer)
        assert not LEAK.search(answer.text), (expected, answer.text)
        if expected >= 400:
            assert answer.headers["content-type"] == PROBLEM_JSON, expected


async def test_server_errors_from_the_edge_carry_the_headers_and_no_internals() -> None:
    # A gateway whose services are all down: the 5xx answers the edge itself makes.
    prefix = f"owasp5xx{uuid.uuid4().hex[:8]}"
    async with (
        running_system(prefix, ["gateway"]) as procs,
        httpx.AsyncClient(base_url=procs["gateway"].url, timeout=30) as client,
    ):
        token, _ = SigningKey.generate().mint("u1")
        answers = [
            await client.post("/api/auth/login", json={"email": "a@example.com", "password": "p"}),
            await client.get("/api/tasks", headers=bearer(token)),  # keys unavailable
        ]
        for answer in answers:
            _assert_problem(answer, 503)
            assert "retry-after" in answer.headers
            assert_helmet(answer)
            assert not LEAK.search(answer.text), answer.text


# --- API9: improper inventory management ----------------------------------------------------

UNDOCUMENTED = (
    "/admin",
    "/api",
    "/api/v1/tasks",
    "/api/v2/tasks",
    "/api/internal/metrics",
    "/api/auth/debug",
    "/api/auth/users",
    "/api/notifications",
    "/api/notifications/dlq",
    "/.env",
    "/.git/config",
    "/server-status",
    "/actuator/health",
    "/.well-known/openid-configuration",
)


async def test_every_documented_read_answers(stack: Stack) -> None:
    # The other way round: the spec lists nothing the public port does not serve.
    reads = sorted(p for m, p in operations(stack.spec) if m == "GET" and "{" not in p)
    assert reads
    for path in reads:
        answer = await stack.gateway.get(path, headers=stack.auth)
        assert answer.status_code not in (404, 405), (path, answer.text)


@pytest.mark.parametrize("path", UNDOCUMENTED)
async def test_an_undocumented_path_is_a_404_problem(stack: Stack, path: str) -> None:
    assert all(path != p for _, p in operations(stack.spec))
    answer = await stack.gateway.get(path, headers=stack.auth)
    _assert_problem(answer, 404)
    assert_helmet(answer)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/api/tasks"),
        ("DELETE", "/api/tasks"),
        ("POST", "/api/tasks/stats"),
        ("TRACE", "/api/tasks"),
    ],
)
async def test_an_undocumented_method_is_a_405_problem(
    stack: Stack, method: str, path: str
) -> None:
    assert (method, path) not in operations(stack.spec)
    _assert_problem(await stack.gateway.request(method, path, headers=stack.auth), 405)
