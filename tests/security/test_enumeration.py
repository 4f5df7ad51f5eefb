"""Issue 12 item 9: what auth tells about which emails have accounts (docs/security.md).

Promised: login and password reset do not reveal whether an account exists (same status, body
and, for reset, the same work before the answer). Not promised: register answers 409 for a
known email (the sign-up form must say so); it is rate limited per address at the gateway.
Before: a reset for a known account took ~8 ms longer (its database write ran before the 202).
"""

import statistics
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from tests.support.auth import PASSWORD, register, start_auth, unique_email
from tests.support.processes import ServiceProcess

pytestmark = pytest.mark.e2e

SAMPLES = 50


@pytest.fixture(scope="module")
def auth() -> Iterator[ServiceProcess]:
    proc = start_auth(f"enum{uuid.uuid4().hex[:8]}")
    try:
        yield proc.wait_ready()
    finally:
        proc.stop()


@pytest.fixture
async def client(auth: ServiceProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=auth.url, timeout=30) as http:
        yield http


async def _reset_ms(client: httpx.AsyncClient, email: str, n: int) -> tuple[float, int]:
    """(ms, status) of one reset request, from its own client address (auth trusts loopback)."""
    headers = {"X-Forwarded-For": f"198.18.{n // 250}.{n % 250 + 1}"}
    start = time.perf_counter()
    response = await client.post("/api/auth/password-reset", json={"email": email}, headers=headers)
    return (time.perf_counter() - start) * 1000, response.status_code


async def test_password_reset_takes_the_same_time_for_known_and_unknown_accounts(
    client: httpx.AsyncClient,
) -> None:
    known = (await register(client))["user"]["email"]
    timings: dict[str, list[float]] = {"known": [], "unknown": []}
    for n in range(SAMPLES):  # interleaved, so drift in machine load hits both alike
        for kind, email in (("known", known), ("unknown", unique_email())):
            ms, status = await _reset_ms(client, email, 2 * n + (kind == "unknown"))
            assert status == 202
            timings[kind].append(ms)
    medians = {kind: statistics.median(values) for kind, values in timings.items()}
    print(f"reset median ms over {SAMPLES} each: {medians}")
    # The answer comes before any lookup or write: no difference beyond noise.
    assert abs(medians["known"] - medians["unknown"]) < 2.0, medians


async def test_reset_answers_the_same_body_whether_or_not_the_account_exists(
    client: httpx.AsyncClient,
) -> None:
    known = (await register(client))["user"]["email"]
    answers = [
        await client.post("/api/auth/password-reset", json={"email": email})
        for email in (known, unique_email())
    ]
    assert [a.status_code for a in answers] == [202, 202]
    assert answers[0].json() == answers[1].json()


async def test_login_answers_the_same_401_for_an_unknown_account_and_a_wrong_password(
    client: httpx.AsyncClient,
) -> None:
    known = (await register(client))["user"]["email"]
    answers = [
        await client.post(
            "/api/auth/login",
            json={"email": email, "password": PASSWORD + "x"},
            headers={"X-Forwarded-For": "198.18.200.1"},
        )
        for email in (known, unique_email())
    ]
    assert [a.status_code for a in answers] == [401, 401]
    assert answers[0].json() == answers[1].json()


async def test_register_reveals_a_known_email_as_documented(client: httpx.AsyncClient) -> None:
    email = unique_email()
    await register(client, email)
    again = await client.post(
        "/api/auth/register", json={"email": email, "password": PASSWORD, "name": "Other"}
    )
    assert again.status_code == 409
    assert again.headers["content-type"] == "application/problem+json"
