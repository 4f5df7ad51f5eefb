"""Issue 12 item 2: failed logins from one address must not lock the owner out from another.

Before: ten wrong passwords from address A made the gateway's per-account policy answer the
victim, from any address, 429 with Retry-After 900, renewable forever. Now the edge limits
addresses only and auth backs off per (account, address), guards the account against addresses
that already missed on it, and caps every delay at 5 minutes.
"""

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.support.auth import PASSWORD, unique_email
from tests.support.system import running_system

pytestmark = pytest.mark.e2e

ATTACKER = "203.0.113.10"
VICTIM = "198.51.100.20"
CAP_S = 300


@pytest.fixture(scope="module")
async def gateway() -> AsyncIterator[httpx.AsyncClient]:
    prefix = f"lock{uuid.uuid4().hex[:8]}"
    env = {
        # The test client stands for the load balancer: its X-Forwarded-For names the client.
        "GATEWAY_TRUSTED_PROXIES": '["127.0.0.1"]',
        # Guarded after 4 misses on an account, so a few addresses show the guard.
        "AUTH_LOGIN_ACCOUNT_FREE_ATTEMPTS": "4",
    }
    async with (
        running_system(prefix, ["auth", "gateway"], **env) as procs,
        httpx.AsyncClient(base_url=procs["gateway"].url, timeout=30) as client,
    ):
        yield client


async def _register(client: httpx.AsyncClient) -> str:
    email = unique_email()
    body = {"email": email, "password": PASSWORD, "name": "Victim"}
    headers = {"X-Forwarded-For": f"192.0.2.{uuid.uuid4().int % 200 + 1}"}
    response = await client.post("/api/auth/register", json=body, headers=headers)
    assert response.status_code == 201, response.text
    return email


async def _login(client: httpx.AsyncClient, email: str, password: str, ip: str) -> httpx.Response:
    body = {"email": email, "password": password}
    return await client.post("/api/auth/login", json=body, headers={"X-Forwarded-For": ip})


async def test_ten_misses_from_one_address_do_not_lock_the_owner_out_from_another(
    gateway: httpx.AsyncClient,
) -> None:
    email = await _register(gateway)
    misses = [await _login(gateway, email, "wrong password!", ATTACKER) for _ in range(10)]
    assert {r.status_code for r in misses} <= {401, 429}
    assert [r.status_code for r in misses[:4]] == [401] * 4

    victim = await _login(gateway, email, PASSWORD, VICTIM)
    assert victim.status_code == 200, victim.text

    # The attacker keeps being refused, even with the right password, and never for long.
    for password in ("wrong password!", PASSWORD):
        again = await _login(gateway, email, password, ATTACKER)
        assert again.status_code == 429, again.text
        assert again.headers["content-type"] == "application/problem+json"
        assert 1 <= int(again.headers["retry-after"]) <= CAP_S


async def test_a_guarded_account_hears_only_addresses_that_never_missed_on_it(
    gateway: httpx.AsyncClient,
) -> None:
    email = await _register(gateway)
    guessers = [f"203.0.113.{100 + n}" for n in range(8)]
    for ip in guessers:  # one guess each: under the per-address allowance, past the account's
        assert (await _login(gateway, email, "wrong password!", ip)).status_code == 401

    guesser = await _login(gateway, email, PASSWORD, guessers[0])
    assert guesser.status_code == 429, guesser.text
    assert 1 <= int(guesser.headers["retry-after"]) <= CAP_S
    owner = await _login(gateway, email, PASSWORD, VICTIM)
    assert owner.status_code == 200, owner.text


async def test_the_edge_keeps_a_per_address_login_limit_within_five_minutes(
    gateway: httpx.AsyncClient,
) -> None:
    ip = "203.0.113.250"
    codes = [
        (await _login(gateway, unique_email(), "wrong password!", ip)).status_code
        for _ in range(11)
    ]
    assert codes[:10] == [401] * 10
    assert codes[10] == 429
    refused = await _login(gateway, unique_email(), "wrong password!", ip)
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["retry-after"]) <= CAP_S
    assert '"login-account"' not in refused.headers["ratelimit-policy"]
