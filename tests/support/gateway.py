"""The gateway in tests: settings on the shared stack (isolated by prefix, a test signing key),
and the app built as `python -m gateway` builds it, served on a free port."""

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import redis
from faststream.kafka import KafkaBroker
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from common.events import USERS_TOPIC, RevokeReason, SessionsRevoked, new_event
from common.kafka import make_broker, publish
from gateway.app import gateway_stack
from gateway.settings import GatewaySettings
from tests.support.infra import KAFKA_BOOTSTRAP, REDIS_URL, free_port
from tests.support.redis_server import RedisServer
from tests.support.servers import EchoUpstream, serve_asgi
from tests.support.tokens import AUDIENCE, ISSUER, SigningKey
from tests.support.waiting import eventually


def gateway_settings(
    prefix: str, key: SigningKey, upstream_url: str, **overrides: Any
) -> GatewaySettings:
    """Settings for an in-process gateway whose three upstreams all point at `upstream_url`."""
    values: dict[str, Any] = {
        "environment": "test",
        "kafka_bootstrap": KAFKA_BOOTSTRAP,
        "topic_prefix": f"{prefix}.",
        "redis_url": REDIS_URL,
        "redis_prefix": f"{prefix}:",
        "jwt_issuer": ISSUER,
        "jwt_audience": AUDIENCE,
        "jwks_json": orjson.dumps(key.jwks()).decode(),
        "auth_url": upstream_url,
        "tasks_url": upstream_url,
        "notifier_url": upstream_url,
        "log_format": "console",
        # Free, so gateways in one test process never contend for the default metrics port.
        "metrics_port": free_port(),
        **overrides,
    }
    return GatewaySettings(**values)


def gateway_env(prefix: str, key: SigningKey, upstream_url: str) -> dict[str, str]:
    """The same, as environment variables for a gateway process."""
    return {
        "TASKBUS_JWT_ISSUER": ISSUER,
        "TASKBUS_JWT_AUDIENCE": AUDIENCE,
        "GATEWAY_JWKS_JSON": orjson.dumps(key.jwks()).decode(),
        "GATEWAY_AUTH_URL": upstream_url,
        "GATEWAY_TASKS_URL": upstream_url,
        "GATEWAY_NOTIFIER_URL": upstream_url,
        "GATEWAY_METRICS_PORT": str(free_port()),
    }


def metrics_url(settings: GatewaySettings) -> str:
    """Where the gateway serves /metrics: its own listener, not the public port."""
    return f"http://127.0.0.1:{settings.metrics_port}/metrics"


@asynccontextmanager
async def serve_gateway(settings: GatewaySettings) -> AsyncIterator[str]:
    """Serve the shipped gateway stack (gateway.app.gateway_stack); yields its base URL."""
    # The process installs a tracer provider before it builds the stack (common.runner); without
    # one no span gets an id of its own and no trace context would go upstream.
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        trace.set_tracer_provider(TracerProvider())
    async with serve_asgi(gateway_stack(settings)) as url:
        yield url


@asynccontextmanager
async def gateway_client(settings: GatewaySettings) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the shipped gateway stack, served on a free port."""
    async with (
        serve_gateway(settings) as url,
        httpx.AsyncClient(base_url=url, timeout=10) as client,
    ):
        yield client


@dataclass
class Restartable:
    """A gateway over a Redis of its own without persistence."""

    server: RedisServer
    settings: GatewaySettings
    key: SigningKey
    client: httpx.AsyncClient
    broker: KafkaBroker

    def bearer(self, user: str, session: str = "s-1") -> dict[str, str]:
        """An Authorization header with a token issued now."""
        token, _ = self.key.mint(user, session_id=session)
        return {"Authorization": f"Bearer {token}"}

    async def restart_empty(self) -> None:
        """SIGKILL and start again (everything Redis held is gone), until the gateway reaches it."""
        self.server.kill()
        await self.back()

    async def back(self) -> None:
        """Start Redis; return once the gateway's gate calls reach it again (no fail-open)."""
        self.server.start()

        async def reached() -> bool:
            reply = await self.client.get("/.well-known/jwks.json")
            return "ratelimit" in reply.headers

        await eventually(reached)

    async def bearer_after_loss(self, user: str, session: str = "s-new") -> dict[str, str]:
        """A token issued after the moment the gateway found Redis empty."""
        marker = redis.Redis.from_url(self.server.url).get(f"{self.settings.redis_prefix}epoch")
        assert isinstance(marker, bytes)
        lost_s = int(marker.split(b":")[1]) / 1000
        assert lost_s > 0  # the gateway recorded the loss

        async def past_it() -> bool:
            return int(time.time()) >= lost_s

        await eventually(past_it)
        return self.bearer(user, session)


@asynccontextmanager
async def restartable_gateway(prefix: str) -> AsyncIterator[Restartable]:
    """An in-process gateway over a Redis of its own without persistence, and a Kafka producer."""
    key = SigningKey.generate()
    tasks = await EchoUpstream("tasks").start()
    server = RedisServer().start()
    settings = gateway_settings(
        f"{prefix}{uuid.uuid4().hex[:10]}", key, tasks.url, redis_url=server.url, cache_ttl_s=600
    )
    broker = make_broker(settings)
    try:
        async with gateway_client(settings) as client:
            await broker.start()
            try:
                yield Restartable(server, settings, key, client, broker)
            finally:
                await broker.stop()
    finally:
        server.kill()
        await tasks.stop()


async def publish_revocation(
    broker: KafkaBroker,
    settings: GatewaySettings,
    user_id: str,
    *session_ids: str,
    reason: RevokeReason = "logout",
) -> None:
    """Publish auth's user.sessions_revoked for the sessions named (all of them when none is)."""
    payload = SessionsRevoked(
        user_id=user_id, session_ids=session_ids, revoked_before=datetime.now(UTC), reason=reason
    )
    event = new_event(payload, source="auth", subject=user_id)
    await publish(broker, settings, USERS_TOPIC, event)
