"""Gateway settings for tests: the shared stack, isolated by prefix, with a test signing key."""

from typing import Any

import orjson

from gateway.settings import GatewaySettings
from tests.support.infra import KAFKA_BOOTSTRAP, REDIS_URL
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
