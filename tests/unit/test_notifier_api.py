"""Preferences API: token required, own preferences only, strict input, problem+json errors."""

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from pydantic import ValidationError

from common.limits import BodyLimit
from common.problems import install_problem_handlers
from common.revocations import RevocationList
from common.tokens import JwksCache, KeysUnavailableError, TokenVerifier
from services.notifier.api import MAX_BODY_BYTES, router
from services.notifier.domain import Preferences
from services.notifier.settings import NotifierSettings
from tests.support.kafka_auth import PRODUCTION_KAFKA
from tests.support.tokens import AUDIENCE, ISSUER, SigningKey

KEY = SigningKey.generate()
OTHER_KEY = SigningKey.generate("other")


def caught_up() -> RevocationList:
    """A revocation list that has read the users topic (and found nothing revoked)."""
    revocations = RevocationList()
    revocations.caught_up = True
    return revocations


class MemoryPreferences:
    def __init__(self) -> None:
        self.saved: dict[str, Preferences] = {}

    async def preferences(self, user_id: str) -> Preferences:
        return self.saved.get(user_id, Preferences())

    async def save_preferences(self, user_id: str, preferences: Preferences) -> None:
        self.saved[user_id] = preferences


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    install_problem_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)
    app.include_router(router)
    app.state.store = MemoryPreferences()
    app.state.verifier = KEY.verifier()
    app.state.revocations = caught_up()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://n") as http:
        yield http


def auth(subject: str, key: SigningKey = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key.mint(subject)[0]}"}


URL = "/api/notifications/preferences"


async def test_defaults_then_each_user_sees_only_their_own(client: httpx.AsyncClient) -> None:
    assert (await client.get(URL, headers=auth("alice"))).json() == {
        "reminders": True,
        "notices": True,
    }
    put = await client.put(URL, json={"reminders": False}, headers=auth("alice"))
    assert put.status_code == 200
    assert put.json() == {"reminders": False, "notices": True}

    assert (await client.get(URL, headers=auth("alice"))).json()["reminders"] is False
    assert (await client.get(URL, headers=auth("bob"))).json()["reminders"] is True


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Basic YTpi"},
        {"Authorization": "Bearer not-a-jwt"},
        {"Authorization": "Bearer " + "x" * 9000},
        auth("alice", OTHER_KEY),
        {"Authorization": f"Bearer {KEY.mint('alice', ttl_s=-60)[0]}"},
    ],
)
async def test_every_bad_credential_gets_the_same_401(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    response = await client.get(URL, headers=headers)

    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.json()["detail"] == "missing or invalid access token"


@pytest.mark.parametrize(
    "body", [{"reminders": False, "is_admin": True}, {"reminders": "sometimes"}, [], "true"]
)
async def test_unknown_or_invalid_fields_are_refused(
    client: httpx.AsyncClient, body: object
) -> None:
    response = await client.put(URL, json=body, headers=auth("alice"))
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"


async def test_oversized_bodies_are_refused_before_parsing(client: httpx.AsyncClient) -> None:
    response = await client.put(
        URL,
        content=b'{"reminders": true, "pad": "' + b"x" * 10_000 + b'"}',
        headers={**auth("alice"), "Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"


async def test_an_unreachable_key_set_answers_503_not_401() -> None:
    async def unreachable() -> dict[str, object]:
        raise KeysUnavailableError("http://auth/jwks")

    app = FastAPI()
    install_problem_handlers(app)
    app.include_router(router)
    app.state.store = MemoryPreferences()
    app.state.verifier = TokenVerifier(JwksCache(unreachable), issuer=ISSUER, audience=AUDIENCE)
    app.state.revocations = caught_up()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://n") as http:
        response = await http.get(URL, headers=auth("alice"))

    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"


def test_settings_refuse_dev_defaults_in_production() -> None:
    with pytest.raises(ValidationError, match="NOTIFIER_RESET_URL_TEMPLATE"):
        NotifierSettings(environment="production", **PRODUCTION_KAFKA)
    with pytest.raises(ValidationError, match="NOTIFIER_MAIL_FROM"):
        NotifierSettings(
            environment="production",
            reset_url_template="https://app.io/r?t={token}",
            **PRODUCTION_KAFKA,
        )
    with pytest.raises(ValidationError, match="plain SMTP"):
        NotifierSettings(
            **PRODUCTION_KAFKA,
            environment="production",
            reset_url_template="https://app.io/r?t={token}",
            mail_from="Taskbus <no-reply@app.io>",
            smtp_host="relay.example",
        )
    fine = {
        **PRODUCTION_KAFKA,
        "environment": "production",
        "reset_url_template": "https://app.io/r?t={token}",
        "mail_from": "Taskbus <no-reply@app.io>",
        "smtp_host": "relay.example",
        "smtp_security": "starttls",
    }
    with pytest.raises(ValidationError, match="TASKBUS_RESET_SEAL_KEY"):
        NotifierSettings.model_validate(fine)
    ok = NotifierSettings.model_validate({**fine, "reset_seal_key": "r" * 40})
    assert ok.is_production


def test_settings_catch_inconsistent_values() -> None:
    with pytest.raises(ValidationError, match="token"):
        NotifierSettings(reset_url_template="https://app.io/r")
    with pytest.raises(ValidationError, match="claim_lease_s"):
        NotifierSettings(smtp_timeout_s=30, claim_lease_s=10)
