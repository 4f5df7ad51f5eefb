"""Pure parts of the gateway: keys, validators, headers, client addresses, token cache, docs."""

import time

import pytest

from common.tokens import AccessClaims, TokenError, TokenVerifier
from gateway.auth import EdgeVerifier
from gateway.cache import (
    ResponseCache,
    cache_key,
    decode,
    encode,
    etag_matches,
    storable,
    with_validator,
)
from gateway.docs import merge
from gateway.pipeline import upstream_headers
from gateway.ratelimit import (
    LimitState,
    TrustedProxies,
    checks_for,
    login_account,
    policy_header,
    ratelimit_header,
    retry_after,
)
from gateway.reply import Reply
from gateway.routes import TABLE
from gateway.settings import LimitPolicy
from tests.support.tokens import SigningKey

LOGIN_IP = LimitPolicy(name="login-ip", limit=10, window_s=900, scope="login", key="ip")
LOGIN_ACCOUNT = LimitPolicy(
    name="login-account", limit=10, window_s=900, scope="login", key="account"
)


def test_ratelimit_headers_follow_draft_11_syntax() -> None:
    assert policy_header([LOGIN_IP, LOGIN_ACCOUNT]) == (
        b'"login-ip";q=10;w=900, "login-account";q=10;w=900'
    )
    states = [LimitState(LOGIN_IP, 0, 42), LimitState(LOGIN_ACCOUNT, 7, 900)]
    assert ratelimit_header(states) == b'"login-ip";r=0;t=42, "login-account";r=7;t=900'
    assert retry_after(states) == 42


def test_checks_skip_policies_whose_key_is_unknown() -> None:
    checks = checks_for([LOGIN_IP, LOGIN_ACCOUNT], ip="1.2.3.4", user=None, account=None)
    assert [c.key for c in checks] == ["rl:login-ip:1.2.3.4"]


def test_login_account_is_normalised_and_hashed() -> None:
    one = login_account(b'{"email": "  Alice@Example.COM "}')
    assert one == login_account(b'{"email": "alice@example.com"}')
    assert one is not None
    assert "alice" not in one
    assert login_account(b"not json") is None
    assert login_account(b'{"email": 3}') is None
    assert login_account(b"[1]") is None


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        ("10.0.0.5", b"1.2.3.4", "10.0.0.5"),  # untrusted peer: header ignored
        ("10.0.0.1", b"1.2.3.4", "1.2.3.4"),
        ("10.0.0.1", b"6.6.6.6, 1.2.3.4", "1.2.3.4"),  # a client cannot spoof by prepending
        ("10.0.0.1", b"1.2.3.4, 10.0.0.2", "1.2.3.4"),  # chained trusted proxies are skipped
        ("10.0.0.1", b"garbage", "10.0.0.1"),
        ("10.0.0.1", None, "10.0.0.1"),
    ],
)
def test_client_ip_believes_forwarded_for_only_from_trusted_proxies(
    peer: str, forwarded: bytes | None, expected: str
) -> None:
    assert TrustedProxies(["10.0.0.1", "10.0.0.2/32"]).client_ip(peer, forwarded) == expected


def test_cache_key_normalises_the_query_and_separates_users_generations_and_vary() -> None:
    base = cache_key("u1", "3", "/api/tasks", b"b=2&a=1", [b"application/json"])
    assert base == cache_key("u1", "3", "/api/tasks", b"a=1&b=2", [b"application/json"])
    assert base != cache_key("u2", "3", "/api/tasks", b"a=1&b=2", [b"application/json"])
    assert base != cache_key("u1", "4", "/api/tasks", b"a=1&b=2", [b"application/json"])
    assert base != cache_key("u1", "3", "/api/tasks", b"a=1&b=2", [b"text/html"])
    assert base.startswith("c:u1:3:")


def test_etag_comparison_is_weak_and_handles_lists_and_star() -> None:
    assert etag_matches(b'"a", W/"b"', b'"b"')
    assert etag_matches(b"*", b'"x"')
    assert not etag_matches(b'"a"', b'"b"')
    assert not etag_matches(None, b'"b"')


def test_storable_respects_no_store_status_size_and_vary() -> None:
    ok = Reply(200, [(b"content-type", b"application/json")], b"{}")
    assert storable(ok, [b"accept"], 10)
    assert not storable(Reply(200, [(b"cache-control", b"no-store")], b""), [], 10)
    assert not storable(Reply(404, [], b""), [], 10)
    assert not storable(Reply(200, [], b"x" * 11), [], 10)
    assert not storable(Reply(200, [(b"vary", b"Cookie")], b""), [b"accept"], 10)
    assert storable(Reply(200, [(b"vary", b"Accept")], b""), [b"accept"], 10)


def test_cached_replies_round_trip_with_a_validator() -> None:
    reply = with_validator(Reply(200, [(b"content-type", b"application/json")], b'{"a":1}'))
    assert reply.header(b"etag") is not None
    assert reply.header(b"cache-control") == b"private, no-cache"
    assert decode(encode(reply)) == reply


@pytest.mark.parametrize(
    ("path", "upstream"),
    [
        ("/api/auth/login", "auth"),
        ("/.well-known/jwks.json", "auth"),
        ("/api/tasks", "tasks"),
        ("/api/tasks/1", "tasks"),
        ("/api/taskset", None),
        ("/api/notifications/x", "notifier"),
        ("/api/other", None),
    ],
)
def test_routes(path: str, upstream: str | None) -> None:
    route = TABLE.match(path)
    assert (route.upstream if route else None) == upstream


def test_public_routes_match_exact_paths_and_slash_prefixes() -> None:
    def public(path: str) -> bool:
        route = TABLE.match(path)
        assert route is not None, path
        return route.public

    assert public("/api/auth/login")
    assert public("/api/auth/password-reset/confirm")
    assert not public("/api/auth/login/x")
    assert not public("/api/auth/me")


@pytest.mark.parametrize(
    ("path", "cacheable"),
    [
        ("/api/tasks", True),
        ("/api/tasks/1", True),
        ("/api/notifications", False),
        ("/api/notifications/preferences", True),
        ("/api/auth/me", False),
    ],
)
def test_cacheable_routes(path: str, cacheable: bool) -> None:
    route = TABLE.match(path)
    assert route is not None
    assert route.cacheable is cacheable


def test_the_pipeline_owns_the_api_namespace_and_the_key_set() -> None:
    for path in ("/api", "/api/unknown", "/api/tasks", "/.well-known/jwks.json"):
        assert TABLE.proxied(path), path
    for path in ("/livez", "/metrics", "/openapi.json", "/docs", "/apix"):
        assert not TABLE.proxied(path), path


def test_only_a_post_to_login_counts_against_the_login_limits() -> None:
    login = TABLE.match("/api/auth/login")
    assert login is not None
    assert (login.limit_scope("POST"), login.limit_scope("GET")) == ("login", "public")
    tasks = TABLE.match("/api/tasks")
    assert tasks is not None
    assert tasks.limit_scope("POST") == "api"


def test_upstream_headers_replace_what_the_gateway_owns() -> None:
    given = [(b"x-forwarded-for", b"6.6.6.6"), (b"x-request-id", b"spoof"), (b"accept", b"*/*")]
    headers = dict(upstream_headers(given, b"rid", "1.2.3.4", "https"))
    assert headers[b"x-forwarded-for"] == b"1.2.3.4"
    assert headers[b"x-request-id"] == b"rid"
    assert headers[b"x-forwarded-proto"] == b"https"
    assert headers[b"accept"] == b"*/*"


class CountingVerifier(TokenVerifier):
    def __init__(self, inner: TokenVerifier) -> None:
        self.inner = inner
        self.calls = 0

    async def verify(self, token: str) -> AccessClaims:
        self.calls += 1
        return await self.inner.verify(token)


async def test_a_verified_token_is_not_verified_again_until_it_expires() -> None:
    key = SigningKey.generate()
    counting = CountingVerifier(key.verifier())
    edge = EdgeVerifier(counting, max_entries=2)
    token, claims = key.mint("u1")
    header = f"Bearer {token}".encode()
    assert await edge.verify(header) == claims
    assert await edge.verify(header) == claims
    assert counting.calls == 1
    expired, _ = key.mint("u1", ttl_s=1, now=time.time() - 60)
    with pytest.raises(TokenError):
        await edge.verify(f"Bearer {expired}".encode())
    for bad in (None, b"Basic abc", b"Bearer "):
        with pytest.raises(TokenError):
            await edge.verify(bad)


async def test_the_token_cache_is_bounded() -> None:
    key = SigningKey.generate()
    counting = CountingVerifier(key.verifier())
    edge = EdgeVerifier(counting, max_entries=2)
    tokens = [f"Bearer {key.mint(f'u{i}')[0]}".encode() for i in range(3)]
    for token in tokens:
        await edge.verify(token)
    await edge.verify(tokens[0])  # evicted by the third: verified again
    assert counting.calls == 4


def test_openapi_merge_keeps_every_service_and_names_the_missing() -> None:
    auth = {
        "paths": {"/api/auth/login": {"post": {}}},
        "components": {"schemas": {"Error": {"type": "object"}}},
    }
    tasks = {
        "paths": {"/api/tasks": {"get": {"$ref": "#/components/schemas/Error"}}},
        "components": {"schemas": {"Error": {"type": "string"}}},
    }
    merged = merge({"auth": auth, "tasks": tasks, "notifier": None})
    assert {"/api/auth/login", "/api/tasks", "/livez"} <= merged["paths"].keys()
    assert merged["components"]["schemas"]["Error"] == {"type": "object"}
    assert merged["components"]["schemas"]["tasks.Error"] == {"type": "string"}
    assert merged["paths"]["/api/tasks"]["get"]["$ref"] == "#/components/schemas/tasks.Error"
    assert merged["info"]["x-taskbus-unavailable"] == ["notifier"]


def test_policies_validate() -> None:
    with pytest.raises(ValueError, match="greater than 0"):
        LimitPolicy(name="x", limit=0, window_s=1, scope="api", key="ip")


class NoRedis:
    """L2 that never answers: these tests are about L1 alone."""

    async def get(self, key: str) -> None:
        return None

    async def set(self, key: str, value: bytes, ex: int) -> None:
        return None


async def test_l1_is_bounded_by_entries_and_by_bytes() -> None:
    cache = ResponseCache(NoRedis(), "p:", ttl_s=60, l1_entries=3, l1_bytes=25)  # type: ignore[arg-type]
    for i in range(4):
        await cache.put(f"k{i}", Reply(200, [], b"x" * 5))
    assert await cache.get("k0") is None  # fourth entry evicted the oldest
    assert await cache.get("k3") is not None
    await cache.put("big", Reply(200, [], b"y" * 20))
    kept = [k for k in ("k1", "k2", "k3", "big") if await cache.get(k) is not None]
    assert kept == ["k3", "big"]  # 5 + 20 bytes fit, nothing more
