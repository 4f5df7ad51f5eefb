"""Running the real auth service in tests, and acting as its client."""

import json
import uuid
from collections.abc import Mapping
from typing import Any

import httpx

from services.auth.keys import SigningKey, generate_key
from tests.support.infra import STATE_DIR, free_port, infra_env
from tests.support.processes import ServiceProcess

PASSWORD = "correct horse battery"


def signing_keys_env(*keys: SigningKey) -> str:
    """AUTH_SIGNING_KEYS for these keys (the first signs)."""
    entries: list[dict[str, Any]] = []
    for key in keys:
        entry: dict[str, Any] = {"kid": key.kid, "private_key": key.pem()}
        if key.retire_after is not None:
            entry["retire_after"] = key.retire_after.isoformat()
        entries.append(entry)
    return json.dumps(entries)


def start_auth(
    prefix: str, extra_env: Mapping[str, str] | None = None, key: SigningKey | None = None
) -> ServiceProcess:
    """Start `python -m services.auth` on a free port against the shared stack (isolated)."""
    port = free_port()
    env = {
        **infra_env(prefix),
        "AUTH_PORT": str(port),
        "AUTH_SIGNING_KEYS": signing_keys_env(key or generate_key("test-auth")),
        **(extra_env or {}),
    }
    log = STATE_DIR / "log" / "tests" / f"{prefix}-auth.log"
    return ServiceProcess("services.auth", port, env, log).start()


def unique_email() -> str:
    """An address no other test uses."""
    return f"u{uuid.uuid4().hex[:12]}@example.com"


async def register(
    client: httpx.AsyncClient, email: str | None = None, password: str = PASSWORD
) -> dict[str, Any]:
    """Register a fresh account; returns the 201 body (user and token pair)."""
    response = await client.post(
        "/api/auth/register",
        json={"email": email or unique_email(), "password": password, "name": "Test User"},
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def bearer(access_token: str) -> dict[str, str]:
    """The Authorization header for an access token."""
    return {"Authorization": f"Bearer {access_token}"}


# Every process that reads an access token, and one authenticated GET on each (a door).
TOKEN_DOORS = {
    "gateway": "/api/tasks",
    "auth": "/api/auth/me",
    "tasks": "/api/tasks",
    "notifier": "/api/notifications/preferences",
}
