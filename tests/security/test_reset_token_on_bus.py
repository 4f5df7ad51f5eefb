"""No secret on the bus (issue 12 item 11): the reset token never travels in plaintext.

Before: `user.password_reset_requested.v1` carried `reset_token` in plaintext on the users topic,
kept for the topic's retention and copied into the DLQ. Now auth seals it for the notifier.
"""

import re
import uuid
from collections.abc import AsyncIterator
from urllib.parse import unquote

import httpx
import pytest

from common.events import USERS_TOPIC
from tests.support.auth import register as register_user
from tests.support.auth import unique_email
from tests.support.kafka import read_records
from tests.support.mail import messages_to
from tests.support.system import running_system
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e
LINK = re.compile(r"https?://\S+?token=([A-Za-z0-9%_\-.~]+)")


@pytest.fixture(scope="module")
async def system() -> AsyncIterator[tuple[str, httpx.AsyncClient]]:
    prefix = f"rst{uuid.uuid4().hex[:10]}"
    async with (
        running_system(prefix, ["auth", "notifier"]) as procs,
        httpx.AsyncClient(base_url=procs["auth"].url, timeout=30) as client,
    ):
        yield prefix, client


async def test_the_mailed_link_resets_and_no_kafka_record_holds_its_token(
    system: tuple[str, httpx.AsyncClient],
) -> None:
    prefix, client = system
    email = unique_email()
    await register_user(client, email)
    asked = await client.post("/api/auth/password-reset", json={"email": email})
    assert asked.status_code == 202

    def mailed_tokens() -> list[str]:
        texts = [str(m.get_body(("plain",)).get_content()) for m in messages_to(email)]  # type: ignore[union-attr]
        return [unquote(found) for text in texts for found in LINK.findall(text)]

    [token] = await eventually(mailed_tokens, what=f"the reset link mailed to {email}")

    records = await read_records(
        f"{prefix}.{USERS_TOPIC}",  # infra_env's topic prefix
        lambda found: any(b"password_reset_requested" in value for value, _ in found),
    )
    raw = b"".join(value + repr(headers).encode() for value, headers in records)
    assert b"password_reset_requested.v2" in raw
    assert token.encode() not in raw

    confirm = "/api/auth/password-reset/confirm"
    done = await client.post(confirm, json={"token": token, "new_password": "renewed by mail"})
    assert done.status_code == 204, done.text
    login = await client.post(
        "/api/auth/login", json={"email": email, "password": "renewed by mail"}
    )
    assert login.status_code == 200
