"""Issue 12 item 10: what an unverified account can make Taskbus mail, and to whom.

Before: the welcome mail carried the name the registrant chose (in the subject, the To display
name and the body) to any address, unverified. Now the welcome carries no account text; a
mailbox gets at most 3 reset mails an hour and an address may ask for at most 20 an hour.
"""

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from common.events import USERS_TOPIC, Envelope, PasswordResetRequested, SessionsRevoked
from services.notifier.domain import Mail
from services.notifier.mailer import Mailer
from services.notifier.settings import NotifierSettings
from tests.support.auth import register, start_auth, unique_email
from tests.support.kafka import collect_events
from tests.support.processes import ServiceProcess

SPAM = "Claim your prize at https://evil.example now"
PREFIX = f"umail{uuid.uuid4().hex[:8]}"


def test_the_welcome_mail_carries_none_of_the_registrants_text() -> None:
    mail = Mail("welcome", "event-1", "u1", "victim@example.com", SPAM, {})
    message = Mailer(NotifierSettings(environment="test")).render(mail, "victim@example.com", SPAM)
    assert message["To"] == "victim@example.com"
    assert message["Subject"] == "Welcome to Taskbus"
    for part in message.walk():
        if not part.is_multipart():
            assert "evil.example" not in str(part.get_content())
    assert "evil.example" not in message.as_string()


@pytest.fixture(scope="module")
def auth() -> Iterator[ServiceProcess]:
    proc = start_auth(PREFIX, {"AUTH_RELAY_POLL_S": "0.2"})
    try:
        yield proc.wait_ready()
    finally:
        proc.stop()


@pytest.fixture
async def client(auth: ServiceProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=auth.url, timeout=30) as http:
        yield http


def _mine(events: list[Envelope], user_id: str, kind: str) -> list[Envelope]:
    return [e for e in events if e.subject == user_id and e.type == kind]


@pytest.mark.e2e
async def test_a_mailbox_gets_at_most_three_reset_mails_an_hour(
    client: httpx.AsyncClient,
) -> None:
    account = await register(client)
    user_id, email = account["user"]["id"], account["user"]["email"]
    for n in range(5):  # from five addresses: the cap is the mailbox's
        headers = {"X-Forwarded-For": f"198.18.50.{n + 1}"}
        answer = await client.post(
            "/api/auth/password-reset", json={"email": email}, headers=headers
        )
        assert answer.status_code == 202
    reset = PasswordResetRequested.event_type
    topic = f"{PREFIX}.{USERS_TOPIC}"
    await collect_events(topic, lambda evs: len(_mine(evs, user_id, reset)) >= 3)
    await asyncio.sleep(0)  # the last background lookups ran with the first three
    # A later event of the same user is published after every earlier one (one outbox, in order).
    bearer = {"Authorization": f"Bearer {account['access_token']}"}
    assert (await client.post("/api/auth/logout-all", headers=bearer)).status_code == 204
    events = await collect_events(
        topic, lambda evs: bool(_mine(evs, user_id, SessionsRevoked.event_type))
    )
    assert len(_mine(events, user_id, reset)) == 3


@pytest.mark.e2e
async def test_one_address_may_ask_for_twenty_resets_an_hour(client: httpx.AsyncClient) -> None:
    headers = {"X-Forwarded-For": "198.18.60.1"}
    codes = [
        (
            await client.post(
                "/api/auth/password-reset", json={"email": unique_email()}, headers=headers
            )
        ).status_code
        for _ in range(21)
    ]
    assert codes == [202] * 20 + [429]
    refused = await client.post(
        "/api/auth/password-reset", json={"email": unique_email()}, headers=headers
    )
    assert refused.headers["content-type"] == "application/problem+json"
    assert 1 <= int(refused.headers["retry-after"]) <= 3600
