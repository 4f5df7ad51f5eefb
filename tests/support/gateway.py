"""The gateway in tests: settings on the shared stack (isolated by prefix, a test signing key),
and the app built as `python -m gateway` builds it, served on a free port."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from gateway.app import gateway_stack
from gateway.settings import GatewaySettings
from tests.support.infra import KAFKA_BOOTSTRAP, REDIS_URL
from tests.support.servers import serve_asgi
from tests.support.tokens import AUDIENCE, ISSUER, SigningKey


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
    }


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
