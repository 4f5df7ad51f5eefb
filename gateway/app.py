"""Composition root of the gateway: a raw ASGI hot path, thin Starlette for everything else."""

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import aiohttp
from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from common.asyncapi import document as asyncapi_document
from common.events import TASKS_TOPIC, USERS_TOPIC
from common.health import Check, health_routes
from common.infra import open_broker, open_redis, ping_kafka, ping_redis
from common.kafka import make_broker
from common.problems import problem_response
from common.telemetry import instrument
from common.tokens import TokenVerifier, jwks_source
from gateway.auth import EdgeVerifier
from gateway.cache import ResponseCache
from gateway.docs import ApiDocs, doc_routes
from gateway.events import subscribe
from gateway.headers import EdgeHeaders, header_bytes
from gateway.metrics import Metrics, metrics_listener
from gateway.pipeline import Pipeline
from gateway.proxy import Upstreams, open_session
from gateway.reply import problem, send_reply
from gateway.routes import TABLE
from gateway.settings import GatewaySettings

JWKS_TIMEOUT_S = 5.0
# Liveness costs nothing and a refused one would get the process restarted: never limited.
UNLIMITED = frozenset({"/livez"})


class Parts:
    """What the lifespan builds and the request handlers use."""

    pipeline: Pipeline | None = None
    docs: ApiDocs | None = None


class Gateway:
    """Routes the API straight to the pipeline; probes and docs go through Starlette."""

    def __init__(self, parts: Parts, rest: Starlette, max_header_bytes: int) -> None:
        self._parts = parts
        self._rest = rest
        self._max_header_bytes = max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Dispatch one ASGI event."""
        if scope["type"] == "http" and header_bytes(scope) > self._max_header_bytes:
            # Before routing and any token work: a huge header must cost nothing more.
            detail = f"request headers exceed {self._max_header_bytes} bytes"
            await send_reply(send, problem(431, detail, scope["path"]), [])
            return
        if scope["type"] == "http" and TABLE.proxied(scope["path"]):
            pipeline = self._parts.pipeline
            if pipeline is None:
                await send_reply(send, problem(503, "starting up", scope["path"]), [])
                return
            await pipeline(scope, receive, send)
            return
        pipeline = self._parts.pipeline
        limited = scope["type"] == "http" and scope["path"] not in UNLIMITED
        if limited and pipeline is not None and not await pipeline.admit_outside_api(scope, send):
            return
        await self._rest(scope, receive, send)


def gateway_stack(settings: GatewaySettings) -> ASGIApp:
    """The gateway as `python -m gateway` serves it (tests build theirs here too).

    Outermost first: server span, request id (a valid X-Request-ID is in the scope from then
    on), RED metrics, then the app; the Redis and aiohttp clients are traced, so each upstream
    call carries a `traceparent` of its own span.
    """
    return instrument(create_app(settings), settings, serve_metrics=False)


def create_app(settings: GatewaySettings) -> ASGIApp:
    """The gateway app without the common middleware; clients are made in the lifespan."""
    checks: dict[str, Check] = {}
    parts = Parts()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            metrics_host = settings.metrics_host or settings.host
            await stack.enter_async_context(metrics_listener(metrics_host, settings.metrics_port))
            redis = await stack.enter_async_context(open_redis(settings))
            session = await stack.enter_async_context(open_session(settings.upstream_pool_size))
            broker = make_broker(settings)
            subscribe(broker, settings, redis)
            await stack.enter_async_context(
                open_broker(settings, [TASKS_TOPIC, USERS_TOPIC], broker)
            )

            pipeline = build_pipeline(settings, redis, session, metrics)
            await pipeline.open()
            parts.pipeline = pipeline
            sources = {
                name: f"{url}/openapi.json"
                for name, (url, _) in settings.upstream_options().items()
            }
            # Every topic Taskbus reads or writes, not just the gateway's own subscriptions.
            events_doc = asyncapi_document(settings)
            parts.docs = ApiDocs(session, sources, settings.docs_cache_s, lambda: events_doc)
            checks["redis"] = lambda: ping_redis(redis)
            checks["kafka"] = lambda: ping_kafka(broker)
            try:
                yield
            finally:
                parts.pipeline = None

    async def on_http_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        return problem_response(
            status,
            str(getattr(exc, "detail", "error")),
            instance=request.url.path,
            headers=getattr(exc, "headers", None),  # a 405's Allow
        )

    rest = Starlette(
        routes=[*health_routes(lambda: checks), *doc_routes(lambda: parts.docs)],
        lifespan=lifespan,
        exception_handlers={HTTPException: on_http_error},
    )
    app = Gateway(parts, rest, settings.max_header_bytes)
    return EdgeHeaders(
        app, settings.cors_origins, settings.cors_max_age_s, settings.cors_allow_credentials
    )


def build_pipeline(
    settings: GatewaySettings, redis: "Redis", session: aiohttp.ClientSession, metrics: Metrics
) -> Pipeline:
    """The hot path over the lifespan's Redis client and upstream pool."""
    verifier = TokenVerifier(
        jwks_source(settings.static_jwks(), session, settings.jwks_url, JWKS_TIMEOUT_S),
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
    )
    cache = ResponseCache(
        redis,
        settings.redis_prefix,
        settings.cache_ttl_s,
        settings.cache_l1_entries,
        settings.cache_l1_bytes,
    )
    return Pipeline(
        settings,
        verifier=EdgeVerifier(verifier, settings.token_cache_size),
        redis=redis,
        cache=cache,
        upstreams=Upstreams(session, settings.upstream_options(), settings.connect_timeout_s),
        metrics=metrics,
    )
