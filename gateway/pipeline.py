"""The proxied request path: body cap, JWT, one Redis gate call, response cache, upstream, reply."""

import re
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.types import Receive, Scope, Send

from common.tokens import (
    UNAUTHORIZED_DETAIL,
    WWW_AUTHENTICATE,
    AccessClaims,
    KeysUnavailableError,
    TokenError,
    session_started_ms,
)
from gateway.auth import EdgeVerifier
from gateway.cache import (
    ResponseCache,
    bump_generation,
    cache_key,
    etag_matches,
    storable,
    with_validator,
)
from gateway.gate import Gate, GateResult, Identity
from gateway.headers import header
from gateway.metrics import Metrics
from gateway.proxy import Upstreams
from gateway.ratelimit import (
    TrustedProxies,
    checks_for,
    login_account,
    policies_for,
    policy_header,
    ratelimit_header,
    retry_after,
)
from gateway.reply import Header, Reply, problem, send_reply
from gateway.routes import TABLE, Route
from gateway.settings import GatewaySettings, LimitScope

log = structlog.get_logger(__name__)

OUTAGE_LOG_INTERVAL_S = 10.0
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_NOT_MODIFIED_HEADERS = frozenset({b"etag", b"cache-control", b"vary", b"last-modified"})
# The gateway sets these itself (traceparent: the aiohttp client span); a client's own values
# must not reach a service.
_CLIENT_DROP = frozenset(
    {b"x-request-id", b"traceparent", b"forwarded"}
    | {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"}
)
_DOT_SEGMENT = re.compile(r"/\.\.?(/|$)")
_CONDITIONAL = frozenset({b"if-none-match", b"if-modified-since"})


class ClientGoneError(Exception):
    """The client disconnected before its request body arrived."""


class Pipeline:
    """ASGI app for every proxied path; the hot path of the gateway."""

    def __init__(
        self,
        settings: GatewaySettings,
        *,
        verifier: EdgeVerifier,
        redis: "Redis",
        cache: ResponseCache,
        upstreams: Upstreams,
        metrics: Metrics,
    ) -> None:
        self._settings = settings
        self._verifier = verifier
        self._redis = redis
        self._gate = Gate(redis, settings.redis_prefix)
        self._cache = cache
        self._upstreams = upstreams
        self._metrics = metrics
        self._proxies = TrustedProxies(settings.trusted_proxies)
        scopes: tuple[LimitScope, ...] = ("login", "public", "api", "meta")
        self._policies = {s: policies_for(settings.rate_limits, s) for s in scopes}
        self._last_outage_log = float("-inf")
        self._vary = tuple(name.lower().encode() for name in settings.cache_vary)

    async def open(self) -> None:
        """Mark this Redis' epoch (gateway.gate.EPOCH_SCRIPT); Redis down: the gate will."""
        try:
            await self._gate.open_epoch()
        except RedisError as exc:
            # Unknown whether it lost state: the first gate call fails closed on the epoch.
            log.warning("redis unavailable at start-up", error=str(exc))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer one proxied request."""
        # RequestIdMiddleware (gateway_stack) left a valid one in the scope.
        request_id = header(scope, b"x-request-id") or b""
        extra: list[Header] = [(b"x-request-id", request_id)]
        route = TABLE.match(scope["path"])
        try:
            if route is None:
                reply = problem(404, "no such route", scope["path"])
            elif _DOT_SEGMENT.search(scope["path"]):
                # Routing and the public-route check read the decoded path: no dot segments
                # may make a service resolve it to somewhere else.
                reply = problem(400, "dot segments are not allowed in the path", scope["path"])
            else:
                scope["route"] = route.template  # the RED metrics' route label
                reply = await self._handle(route, scope, receive, extra)
        except ClientGoneError:
            return
        await send_reply(send, reply, extra, head=scope["method"] == "HEAD")

    async def _handle(
        self, route: Route, scope: Scope, receive: Receive, extra: list[Header]
    ) -> Reply:
        path, method = scope["path"], scope["method"]
        body = await read_body(scope, receive, self._settings.max_body_bytes)
        if body is None:
            return problem(413, f"body exceeds {self._settings.max_body_bytes} bytes", path)
        ip = self._client_ip(scope)
        limit_scope = route.limit_scope(method)
        claims: AccessClaims | None = None
        if not route.public:
            try:
                claims = await self._verifier.verify(header(scope, b"authorization"))
            except TokenError:
                # Still counted under the route's per-IP policies: forged or missing tokens
                # must not be free to send (issue 12 item 6).
                _, limited = await self._pass_gate(
                    limit_scope, scope, claims=None, ip=ip, extra=extra
                )
                return limited or problem(401, UNAUTHORIZED_DETAIL, path, WWW_AUTHENTICATE)
            except KeysUnavailableError:
                return problem(503, "token keys unavailable", path, {"Retry-After": "5"})
        gate, refusal = await self._pass_gate(
            limit_scope, scope, body=body, claims=claims, ip=ip, extra=extra
        )
        if refusal is not None:
            return refusal
        headers = upstream_headers(scope["headers"], extra[0][1], ip, scope.get("scheme", "http"))
        target = request_target(scope)
        forward = partial(self._upstreams.forward, route.upstream, method, target)
        if method == "GET" and claims and gate and route.cacheable and _revalidates(scope):
            vary = [header(scope, name) for name in self._vary]
            key = cache_key(claims.sub, gate.generation, path, scope["query_string"], vary)
            # The entry serves every client, so fetch the full representation, not a 304.
            unconditional = [(k, v) for k, v in headers if k not in _CONDITIONAL]
            return await self._cached(scope, key, lambda: forward(unconditional, b""), extra)
        reply = await forward(headers, body)
        extra.append((b"x-cache", b"BYPASS"))
        self._metrics.cache("bypass")
        if claims and method not in _SAFE_METHODS and 200 <= reply.status < 300:
            await self._invalidate(claims.sub)
        return reply

    async def admit_outside_api(self, scope: Scope, send: Send) -> bool:
        """Probes, docs, the spec: the per-IP "meta" policies; False once it answered 429."""
        extra: list[Header] = [(b"x-request-id", header(scope, b"x-request-id") or b"")]
        ip = self._client_ip(scope)
        _, refusal = await self._pass_gate("meta", scope, claims=None, ip=ip, extra=extra)
        if refusal is None:
            return True
        await send_reply(send, refusal, extra, head=scope["method"] == "HEAD")
        return False

    def _client_ip(self, scope: Scope) -> str:
        peer = scope["client"][0] if scope.get("client") else "0.0.0.0"
        return self._proxies.client_ip(peer, header(scope, b"x-forwarded-for"))

    async def _pass_gate(
        self,
        limit_scope: LimitScope,
        scope: Scope,
        *,
        claims: AccessClaims | None,
        ip: str,
        extra: list[Header],
        body: bytes = b"",
    ) -> tuple[GateResult | None, Reply | None]:
        """Revocation and rate limits in one Redis call; a refusal reply, or None to go on."""
        path = scope["path"]
        account = login_account(body) if limit_scope == "login" else None
        user = claims.sub if claims else None
        checks = checks_for(self._policies[limit_scope], ip=ip, user=user, account=account)
        identity = (
            Identity(claims.sub, claims.sid, claims.iat, session_started_ms(claims))
            if claims
            else None
        )
        names = [check.policy.name for check in checks]
        try:
            gate = await self._gate.check(identity, checks)
        except RedisError as exc:
            mode = self._settings.redis_failure_mode
            self._metrics.limiter(names, f"fail_{mode}")
            self._log_outage(mode, exc)
            if mode == "closed":
                return None, problem(503, "rate limiter unavailable", path, {"Retry-After": "1"})
            return None, None
        if gate.revoked:
            return gate, problem(401, UNAUTHORIZED_DETAIL, path, WWW_AUTHENTICATE)
        if gate.states:
            extra.append((b"ratelimit-policy", policy_header(s.policy for s in gate.states)))
            extra.append((b"ratelimit", ratelimit_header(gate.states)))
        if not gate.admitted:
            self._metrics.limiter(names, "limited")
            wait = str(retry_after(gate.states))
            return gate, problem(429, "rate limit exceeded", path, {"Retry-After": wait})
        self._metrics.limiter(names, "admitted")
        return gate, None

    def _log_outage(self, mode: str, exc: RedisError) -> None:
        """At most one line per interval: an outage must not flood the logs."""
        now = time.monotonic()
        if now - self._last_outage_log >= OUTAGE_LOG_INTERVAL_S:
            self._last_outage_log = now
            log.warning("redis unavailable", failure_mode=mode, error=str(exc))

    async def _cached(
        self,
        scope: Scope,
        key: str,
        fetch: Callable[[], Awaitable[Reply]],
        extra: list[Header],
    ) -> Reply:
        """From the cache under `key`, else `fetch`ed (once for concurrent misses) and stored."""
        reply = await self._cache.get(key)
        state = b"HIT"
        if reply is None:

            async def fill() -> Reply:
                fresh = await fetch()
                if not storable(fresh, self._vary, self._settings.cache_max_body_bytes):
                    return fresh
                fresh = with_validator(fresh)
                await self._cache.put(key, fresh)
                return fresh

            reply = await self._cache.single_flight(key, fill)
            stored = storable(reply, self._vary, self._settings.cache_max_body_bytes)
            state = b"MISS" if stored else b"BYPASS"
        extra.append((b"x-cache", state))
        self._metrics.cache(state.decode().lower())
        if reply.status == 200 and etag_matches(
            header(scope, b"if-none-match"), reply.header(b"etag")
        ):
            kept = [(k, v) for k, v in reply.headers if k in _NOT_MODIFIED_HEADERS]
            return Reply(304, kept, b"")
        return reply

    async def _invalidate(self, user: str) -> None:
        """The user's own write: orphan their cached reads before answering."""
        try:
            await bump_generation(self._redis, self._settings.redis_prefix, user)
        except RedisError as exc:
            # The L2 entries wait for the task event; this process' L1 must not serve them.
            self._cache.forget_local()
            log.warning("cache invalidation failed", user=user, error=str(exc))


def _revalidates(scope: Scope) -> bool:
    """False if the client asks for a fresh answer (no-cache) or none stored (no-store)."""
    control = (header(scope, b"cache-control") or b"").lower()
    return b"no-cache" not in control and b"no-store" not in control


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or None once it exceeds `limit` bytes."""
    declared = header(scope, b"content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGoneError
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


def request_target(scope: Scope) -> str:
    """Path and query exactly as the client sent them (percent-encoding kept)."""
    raw = scope.get("raw_path")
    path = raw.decode("latin-1") if raw else scope["path"]
    query = scope["query_string"]
    return f"{path}?{query.decode('latin-1')}" if query else path


def upstream_headers(
    headers: Sequence[tuple[bytes, bytes]], request_id: bytes, ip: str, scheme: str
) -> list[Header]:
    """The client's headers plus request id and the forwarded client."""
    given = dict(headers)
    forwarded = [
        *((k, v) for k, v in headers if k not in _CLIENT_DROP),
        (b"x-request-id", request_id),
        (b"x-forwarded-for", ip.encode()),
        (b"x-forwarded-proto", scheme.encode()),
    ]
    if b"host" in given:  # the upstream sees its own Host; links it builds need the public one
        forwarded.append((b"x-forwarded-host", given[b"host"]))
    return forwarded
