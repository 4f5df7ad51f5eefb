"""The auth service as a real process on the real stack: the whole flow the issue lists."""

import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest
from argon2 import PasswordHasher
from cryptography.hazmat.primitives import serialization
from pymongo import AsyncMongoClient, MongoClient
from pymongo.asynchronous.database import AsyncDatabase

from common.events import USERS_TOPIC, Envelope, PasswordResetRequested
from common.sealing import DEV_RESET_SEAL_KEY, Sealer, reset_context
from common.tokens import ACCESS_TOKEN_TYPE, JwksCache, TokenVerifier
from services.auth.keys import SigningKey, generate_key
from tests.support.auth import (
    PASSWORD,
    bearer,
    register,
    signing_keys_env,
    start_auth,
    unique_email,
)
from tests.support.infra import MONGO_URL, free_port, infra_env
from tests.support.kafka import collect_events
from tests.support.kafka_auth import PRODUCTION_KAFKA_ENV
from tests.support.processes import ServiceProcess
from tests.support.tokens import AUDIENCE, ISSUER
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e

CURRENT = generate_key("current")
PREVIOUS = SigningKey(
    "previous", generate_key().private_key, datetime.now(UTC) + timedelta(hours=1)
)
RETIRED = SigningKey("retired", generate_key().private_key, datetime.now(UTC) - timedelta(hours=1))
UNAUTHORIZED = {"type": "about:blank", "title": "Unauthorized", "status": 401}
FREE_ATTEMPTS = 3
BACKOFF_CAP_S = 2
PREFIX = f"auth{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def auth() -> Iterator[ServiceProcess]:
    env = {
        "AUTH_SIGNING_KEYS": signing_keys_env(CURRENT, PREVIOUS, RETIRED),
        "AUTH_LOGIN_FREE_ATTEMPTS": str(FREE_ATTEMPTS),
        "AUTH_LOGIN_BACKOFF_CAP_S": str(BACKOFF_CAP_S),
    }
    proc = start_auth(PREFIX, env)
    try:
        yield proc.wait_ready()
    finally:
        proc.stop()
        _drop_database(f"{PREFIX}_auth")


def _drop_database(name: str) -> None:
    mongo: MongoClient[dict[str, Any]]
    with MongoClient(MONGO_URL) as mongo:
        mongo.drop_database(name)


@pytest.fixture
async def client(auth: ServiceProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=auth.url, timeout=30) as http:
        yield http


@pytest.fixture
async def db() -> AsyncIterator[AsyncDatabase[dict[str, Any]]]:
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(MONGO_URL, tz_aware=True)
    try:
        yield mongo[f"{PREFIX}_auth"]
    finally:
        await mongo.close()


async def _refresh(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.post("/api/auth/refresh", json={"refresh_token": token})


async def _login(client: httpx.AsyncClient, email: str, password: str) -> httpx.Response:
    return await client.post("/api/auth/login", json={"email": email, "password": password})


def _problem(response: httpx.Response) -> dict[str, Any]:
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    return body


def _assert_unauthorized(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    body = _problem(response)
    assert {k: body[k] for k in UNAUTHORIZED} == UNAUTHORIZED
    assert body["detail"] == "authentication failed"


async def _user_events(user_id: str, until: Any, within: float = 30.0) -> list[Envelope]:
    events = await collect_events(
        f"{PREFIX}.{USERS_TOPIC}",
        lambda evs: until([e for e in evs if e.subject == user_id]),
        within,
    )
    return [e for e in events if e.subject == user_id]


def _revocations(events: list[Envelope], reason: str) -> list[dict[str, Any]]:
    return [
        e.data
        for e in events
        if e.type == "user.sessions_revoked.v1" and e.data["reason"] == reason
    ]


async def test_register_answers_user_and_verifiable_tokens_and_stores_argon2id(
    client: httpx.AsyncClient, auth: ServiceProcess, db: AsyncDatabase[dict[str, Any]]
) -> None:
    email = unique_email()
    response = await client.post(
        "/api/auth/register",
        json={"email": f"  {email.upper()} ", "password": PASSWORD, "name": "Ann"},
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["user"]["email"] == email
    assert body["token_type"] == "Bearer"

    async def fetch() -> dict[str, Any]:
        jwks: dict[str, Any] = (await client.get("/.well-known/jwks.json")).json()
        return jwks

    verifier = TokenVerifier(JwksCache(fetch), issuer=ISSUER, audience=AUDIENCE)
    claims = await verifier.verify(body["access_token"])
    assert claims.sub == body["user"]["id"]
    assert claims.sid == body["session_id"]
    assert claims.exp - claims.iat == 900
    header = jwt.get_unverified_header(body["access_token"])
    assert header == {"alg": "RS256", "kid": CURRENT.kid, "typ": ACCESS_TOKEN_TYPE}

    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"taskbus_refresh={body['refresh_token']};")
    for attribute in ("HttpOnly", "Secure", "SameSite=strict", "Path=/api/auth"):
        assert attribute in cookie

    stored = await db.users.find_one({"email": email})
    assert stored is not None
    assert stored["password_hash"].startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert PASSWORD not in json.dumps(stored, default=str)

    again = await client.post(
        "/api/auth/register", json={"email": email.title(), "password": PASSWORD, "name": "B"}
    )
    assert again.status_code == 409
    assert _problem(again)["errors"][0]["loc"] == ["body", "email"]


async def test_whole_session_flow(client: httpx.AsyncClient) -> None:
    email = unique_email()
    first = await register(client, email)
    user_id = first["user"]["id"]

    me = await client.get("/api/auth/me", headers=bearer(first["access_token"]))
    assert me.status_code == 200
    assert me.json() == first["user"]
    renamed = await client.patch(
        "/api/auth/me", json={"name": "Renamed"}, headers=bearer(first["access_token"])
    )
    assert renamed.status_code == 200
    assert renamed.json() == {"user": {**first["user"], "name": "Renamed"}, "tokens": None}

    rotated = await _refresh(client, first["refresh_token"])
    assert rotated.status_code == 200
    second = rotated.json()
    assert second["session_id"] == first["session_id"]
    assert second["refresh_token"] != first["refresh_token"]
    # The HttpOnly cookie works in place of the body.
    by_cookie = await client.post(
        "/api/auth/refresh", headers={"Cookie": f"taskbus_refresh={second['refresh_token']}"}
    )
    assert by_cookie.status_code == 200
    third = by_cookie.json()

    logout = await client.post("/api/auth/logout", headers=bearer(third["access_token"]))
    assert logout.status_code == 204
    assert "taskbus_refresh=" in logout.headers["set-cookie"]
    _assert_unauthorized(await _refresh(client, third["refresh_token"]))
    _assert_unauthorized(await client.get("/api/auth/me", headers=bearer(third["access_token"])))

    one = (await _login(client, email, PASSWORD)).json()
    two = (await _login(client, email, PASSWORD)).json()
    assert one["session_id"] != two["session_id"]
    everywhere = await client.post("/api/auth/logout-all", headers=bearer(one["access_token"]))
    assert everywhere.status_code == 204
    for session in (one, two):
        _assert_unauthorized(await _refresh(client, session["refresh_token"]))
        _assert_unauthorized(
            await client.get("/api/auth/me", headers=bearer(session["access_token"]))
        )

    events = await _user_events(
        user_id, lambda evs: _revocations(evs, "logout") and _revocations(evs, "logout_all")
    )
    assert _revocations(events, "logout")[0]["session_ids"] == [first["session_id"]]
    assert _revocations(events, "logout_all")[0]["session_ids"] == []


async def test_logout_by_refresh_token_when_the_access_token_is_gone(
    client: httpx.AsyncClient,
) -> None:
    session = await register(client)
    _assert_unauthorized(await client.post("/api/auth/logout", json={"refresh_token": "x" * 80}))
    cookie = {"Cookie": f"taskbus_refresh={session['refresh_token']}"}
    assert (await client.post("/api/auth/logout", headers=cookie)).status_code == 204
    _assert_unauthorized(await _refresh(client, session["refresh_token"]))


async def test_reusing_a_spent_refresh_token_revokes_its_family_only(
    client: httpx.AsyncClient,
) -> None:
    email = unique_email()
    first = await register(client, email)
    other = (await _login(client, email, PASSWORD)).json()
    second = (await _refresh(client, first["refresh_token"])).json()
    third = (await _refresh(client, second["refresh_token"])).json()

    # first is two rotations old: no grace, a replay.
    _assert_unauthorized(await _refresh(client, first["refresh_token"]))
    _assert_unauthorized(await _refresh(client, third["refresh_token"]))
    _assert_unauthorized(await client.get("/api/auth/me", headers=bearer(third["access_token"])))
    assert (await _refresh(client, other["refresh_token"])).status_code == 200

    events = await _user_events(first["user"]["id"], lambda e: _revocations(e, "refresh_reuse"))
    assert _revocations(events, "refresh_reuse")[0]["session_ids"] == [first["session_id"]]


async def test_previous_refresh_token_is_honoured_once_within_the_grace(
    client: httpx.AsyncClient,
) -> None:
    first = await register(client)
    lost = (await _refresh(client, first["refresh_token"])).json()
    retried = await _refresh(client, first["refresh_token"])
    assert retried.status_code == 200
    assert (await _refresh(client, retried.json()["refresh_token"])).status_code == 200
    # The response said lost turned up after all: two holders of one family, so it ends.
    _assert_unauthorized(await _refresh(client, lost["refresh_token"]))


async def test_two_simultaneous_refreshes_with_one_token_both_succeed(
    client: httpx.AsyncClient,
) -> None:
    first = await register(client)
    answers = await asyncio.gather(*(_refresh(client, first["refresh_token"]) for _ in range(2)))
    assert [a.status_code for a in answers] == [200, 200]
    assert answers[0].json()["refresh_token"] != answers[1].json()["refresh_token"]


async def test_unknown_or_malformed_refresh_tokens_change_nothing(
    client: httpx.AsyncClient,
) -> None:
    first = await register(client)
    # Someone who knows the session id (it is in every access token) but not the secret.
    guessed = f"{first['session_id']}.{'A' * 43}"
    for token in (guessed, "garbage", "x" * 150):
        _assert_unauthorized(await _refresh(client, token))
    _assert_unauthorized(await client.post("/api/auth/refresh"))
    assert (await _refresh(client, first["refresh_token"])).status_code == 200


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _forge(header: dict[str, Any], claims: dict[str, Any], sign: Any) -> str:
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{_b64(sign(signing_input.encode()))}"


def _attack_tokens(good: str, refresh_token: str) -> dict[str, str]:
    """Every RFC 8725 section 3 forgery that applies to a bearer access token."""
    claims = jwt.decode(good, options={"verify_signature": False})
    kid = CURRENT.kid
    header = {"alg": "RS256", "kid": kid, "typ": ACCESS_TOKEN_TYPE}
    public_pem = CURRENT.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )

    def rs256(key: SigningKey, extra_claims: dict[str, Any], **extra_header: Any) -> str:
        return jwt.encode(
            claims | extra_claims, key.private_key, "RS256", headers=header | extra_header
        )

    head, payload, signature = good.split(".")
    tampered = _b64(json.dumps(claims | {"sub": "someone-else"}).encode())
    now = int(time.time())
    return {
        "alg none": _forge(header | {"alg": "none"}, claims, lambda _: b""),
        "HS256 keyed with the public key": _forge(
            header | {"alg": "HS256"},
            claims,
            lambda data: hmac.new(public_pem, data, hashlib.sha256).digest(),
        ),
        "another key, same kid": rs256(SigningKey(kid, generate_key().private_key), {}),
        "tampered payload": f"{head}.{tampered}.{signature}",
        "stripped signature": f"{head}.{payload}.",
        "expired": rs256(CURRENT, {"iat": now - 1000, "nbf": now - 1000, "exp": now - 100}),
        "not yet valid": rs256(CURRENT, {"nbf": now + 600}),
        "wrong typ": rs256(CURRENT, {}, typ="JWT"),
        "wrong audience": rs256(CURRENT, {"aud": "another-api"}),
        "wrong issuer": rs256(CURRENT, {"iss": "https://evil.test"}),
        "jku header": rs256(CURRENT, {}, jku="https://evil.test/jwks.json"),
        "unknown kid": rs256(CURRENT, {}, kid="nope"),
        "retired key": rs256(RETIRED, {}, kid=RETIRED.kid),
        "refresh token as access token": refresh_token,
        "not a jwt": "garbage",
    }


async def test_every_forged_or_misused_token_gets_one_uniform_401(
    client: httpx.AsyncClient,
) -> None:
    session = await register(client)
    attacks = _attack_tokens(session["access_token"], session["refresh_token"])
    bodies = set()
    for name, token in attacks.items():
        response = await client.get("/api/auth/me", headers=bearer(token))
        assert response.status_code == 401, name
        bodies.add(response.content)
    missing = await client.get("/api/auth/me")
    bodies.add(missing.content)
    assert len(bodies) == 1
    _assert_unauthorized(missing)

    # The previous key is still published, so a token it signed keeps working until it expires.
    claims = jwt.decode(session["access_token"], options={"verify_signature": False})
    old = jwt.encode(
        claims,
        PREVIOUS.private_key,
        "RS256",
        headers={"kid": PREVIOUS.kid, "typ": ACCESS_TOKEN_TYPE},
    )
    assert (await client.get("/api/auth/me", headers=bearer(old))).status_code == 200


async def test_jwks_publishes_current_and_previous_keys_but_not_retired_ones(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/.well-known/jwks.json")
    assert response.status_code == 200
    keys = response.json()["keys"]
    assert [key["kid"] for key in keys] == [CURRENT.kid, PREVIOUS.kid]
    assert all(key["alg"] == "RS256" and key["use"] == "sig" for key in keys)
    assert not any("d" in key or "p" in key for key in keys)


async def test_login_failures_are_uniform_and_back_off_for_a_bounded_time(
    client: httpx.AsyncClient,
) -> None:
    email, unknown = unique_email(), unique_email()
    await register(client, email)
    wrong = await _login(client, email, "wrong password")
    nobody = await _login(client, unknown, "wrong password")
    _assert_unauthorized(wrong)
    assert (wrong.status_code, wrong.content) == (nobody.status_code, nobody.content)

    for address in (email, unknown):
        for _ in range(FREE_ATTEMPTS - 1):  # the back-off starts at the FREE_ATTEMPTS-th miss
            _assert_unauthorized(await _login(client, address, "wrong password"))
    blocked = await _login(client, email, PASSWORD)
    blocked_unknown = await _login(client, unknown, PASSWORD)
    for response in (blocked, blocked_unknown):
        assert response.status_code == 429
        assert 1 <= int(response.headers["retry-after"]) <= BACKOFF_CAP_S
    assert blocked.json()["detail"] == blocked_unknown.json()["detail"]

    async def admitted() -> httpx.Response | None:
        response = await _login(client, email, PASSWORD)
        return response if response.status_code != 429 else None

    response = await eventually(admitted, 5 * BACKOFF_CAP_S, "the back-off to end within its cap")
    assert response.status_code == 200


async def test_bad_input_is_refused_naming_the_field_and_nothing_is_written(
    client: httpx.AsyncClient, db: AsyncDatabase[dict[str, Any]]
) -> None:
    email = unique_email()
    good = {"email": email, "password": PASSWORD, "name": "Ann"}
    cases: list[tuple[dict[str, Any], str]] = [
        ({**good, "role": "admin"}, "role"),
        ({**good, "email": 5}, "email"),
        ({**good, "email": "not-an-email"}, "email"),
        ({**good, "password": "short"}, "password"),
        ({**good, "password": "x" * 129}, "password"),
        ({**good, "password": email.upper()}, "password"),
        ({**good, "name": ""}, "name"),
        ({**good, "name": "   "}, "name"),
        ({"email": email, "password": PASSWORD}, "name"),
    ]
    for body, field in cases:
        response = await client.post("/api/auth/register", json=body)
        assert response.status_code == 422, (body, response.text)
        assert ["body", field] in [e["loc"] for e in _problem(response)["errors"]], body

    malformed = await client.post(
        "/api/auth/register",
        content=b'{"email": ',
        headers={"content-type": "application/json"},
    )
    assert malformed.status_code == 422
    _problem(malformed)
    oversize = await client.post("/api/auth/register", json={**good, "name": "x" * 20_000})
    assert oversize.status_code == 413
    _problem(oversize)

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"email": "' + email.encode() + b'", "name": "'
        for _ in range(20):
            yield b"x" * 1000
        yield b'", "password": "correct horse battery"}'

    undeclared = await client.post(
        "/api/auth/register", content=chunks(), headers={"content-type": "application/json"}
    )
    assert undeclared.status_code == 413
    _problem(undeclared)
    patch = await client.patch("/api/auth/me", json={"role": "admin"})
    assert patch.status_code in (401, 422)

    assert await db.users.count_documents({"email": email}) == 0


async def test_password_change_revokes_every_other_session(
    client: httpx.AsyncClient,
) -> None:
    email = unique_email()
    mine = await register(client, email)
    other = (await _login(client, email, PASSWORD)).json()
    change = {"current_password": PASSWORD, "new_password": "a brand new secret"}

    wrong = await client.patch(
        "/api/auth/me",
        json={**change, "current_password": "not it at all"},
        headers=bearer(mine["access_token"]),
    )
    _assert_unauthorized(wrong)
    weak = await client.patch(
        "/api/auth/me", json={**change, "new_password": email}, headers=bearer(mine["access_token"])
    )
    assert weak.status_code == 422
    assert _problem(weak)["errors"][0]["loc"] == ["body", "new_password"]

    changed = await client.patch("/api/auth/me", json=change, headers=bearer(mine["access_token"]))
    assert changed.status_code == 200, changed.text
    fresh = changed.json()["tokens"]
    for session in (mine, other):
        _assert_unauthorized(await _refresh(client, session["refresh_token"]))
    assert (await client.get("/api/auth/me", headers=bearer(fresh["access_token"]))).is_success
    assert (await _refresh(client, fresh["refresh_token"])).status_code == 200
    _assert_unauthorized(await _login(client, email, PASSWORD))
    assert (await _login(client, email, change["new_password"])).status_code == 200

    events = await _user_events(mine["user"]["id"], lambda e: _revocations(e, "password_changed"))
    revoked_before = datetime.fromisoformat(
        _revocations(events, "password_changed")[0]["revoked_before"]
    )
    assert jwt.decode(fresh["access_token"], options={"verify_signature": False})["iat"] >= int(
        revoked_before.timestamp()
    )


async def test_guessing_the_current_password_with_a_stolen_token_backs_off(
    client: httpx.AsyncClient,
) -> None:
    session = await register(client)
    guess = {"current_password": "a wrong guess", "new_password": "attacker chosen pw"}
    for _ in range(FREE_ATTEMPTS):
        _assert_unauthorized(
            await client.patch("/api/auth/me", json=guess, headers=bearer(session["access_token"]))
        )
    right = {**guess, "current_password": PASSWORD}
    blocked = await client.patch(
        "/api/auth/me", json=right, headers=bearer(session["access_token"])
    )
    assert blocked.status_code == 429
    assert int(blocked.headers["retry-after"]) <= BACKOFF_CAP_S


async def test_password_reset_by_mail_token_single_use(
    client: httpx.AsyncClient,
) -> None:
    email = unique_email()
    session = await register(client, email)
    user_id = session["user"]["id"]
    known = await client.post("/api/auth/password-reset", json={"email": email})
    unknown = await client.post("/api/auth/password-reset", json={"email": unique_email()})
    assert known.status_code == unknown.status_code == 202
    assert known.content == unknown.content

    events = await _user_events(
        user_id, lambda evs: any(e.type == PasswordResetRequested.event_type for e in evs)
    )
    request = PasswordResetRequested.model_validate(
        next(e for e in events if e.type == PasswordResetRequested.event_type).data
    )
    assert request.email == email
    # The token travels sealed (issue 12 item 11); the notifier's key opens it.
    context = reset_context(request.user_id, request.email, request.expires_at)
    token = Sealer(DEV_RESET_SEAL_KEY).open(request.sealed_token, context)
    assert token not in request.model_dump_json()

    confirm = "/api/auth/password-reset/confirm"
    _assert_unauthorized(
        await client.post(confirm, json={"token": "x" * 43, "new_password": "n" * 9})
    )
    weak = await client.post(confirm, json={"token": token, "new_password": "short"})
    assert weak.status_code == 422
    done = await client.post(confirm, json={"token": token, "new_password": "reset and renewed"})
    assert done.status_code == 204, done.text
    again = await client.post(confirm, json={"token": token, "new_password": "a third password"})
    _assert_unauthorized(again)

    _assert_unauthorized(await _refresh(client, session["refresh_token"]))
    assert (await _login(client, email, "reset and renewed")).status_code == 200
    await _user_events(user_id, lambda e: _revocations(e, "password_reset"))


async def test_login_rehashes_a_password_hashed_with_weaker_parameters(
    client: httpx.AsyncClient, db: AsyncDatabase[dict[str, Any]]
) -> None:
    email = unique_email()
    await register(client, email)
    weak = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash(PASSWORD)
    await db.users.update_one({"email": email}, {"$set": {"password_hash": weak}})

    assert (await _login(client, email, PASSWORD)).status_code == 200
    stored = await db.users.find_one({"email": email})
    assert stored is not None
    assert stored["password_hash"].startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert (await _login(client, email, PASSWORD)).status_code == 200


async def test_user_registered_is_published_exactly_once_per_registration(
    client: httpx.AsyncClient, db: AsyncDatabase[dict[str, Any]]
) -> None:
    first = [(await register(client))["user"]["id"] for _ in range(2)]

    # Wait for the relay to have published and removed them, then make it run again.
    async def drained() -> bool:
        pending = {"_id": {"$in": first}, "outbox_pending": True}
        return await db.users.count_documents(pending) == 0

    await eventually(drained, 30, "the outbox to drain")
    last = (await register(client))["user"]["id"]
    users = {*first, last}

    def registered(evs: list[Envelope]) -> list[str]:
        return [e.subject for e in evs if e.type == "user.registered.v1" and e.subject in users]

    events = await collect_events(f"{PREFIX}.{USERS_TOPIC}", lambda evs: last in registered(evs))
    seen = registered(events)
    assert sorted(seen) == sorted(users)
    assert all(e.source == "/taskbus/auth" for e in events if e.subject in users)


def test_production_without_signing_keys_refuses_to_start(tmp_path: Any) -> None:
    port = free_port()
    env = {
        **infra_env(PREFIX),
        "AUTH_PORT": str(port),
        "TASKBUS_ENVIRONMENT": "production",
        **PRODUCTION_KAFKA_ENV,
    }
    proc = ServiceProcess("services.auth", port, env, tmp_path / "auth.log").start()
    try:
        with pytest.raises(RuntimeError, match="exited"):
            proc.wait_live(within=30)
        assert "AUTH_SIGNING_KEYS must be set in production" in proc.log_tail(60)
    finally:
        proc.stop()


async def test_a_dead_dependency_answers_503_problem_not_a_crash(tmp_path: Any) -> None:
    port, dead = free_port(), free_port()
    env = {
        **infra_env(PREFIX),
        "AUTH_PORT": str(port),
        "AUTH_SIGNING_KEYS": signing_keys_env(CURRENT),
        "TASKBUS_REDIS_URL": f"redis://127.0.0.1:{dead}/0",
    }
    proc = ServiceProcess("services.auth", port, env, tmp_path / "auth.log").start()
    try:
        async with httpx.AsyncClient(base_url=proc.wait_live().url, timeout=30) as http:
            response = await _login(http, unique_email(), PASSWORD)
        assert response.status_code == 503
        assert _problem(response)["status"] == 503
    finally:
        proc.stop()


def test_replicas_without_configured_keys_share_one_development_key(tmp_path: Any) -> None:
    prefix = f"devkey{uuid.uuid4().hex[:8]}"
    replicas = []
    for name in ("a", "b"):
        port = free_port()
        env = {**infra_env(prefix), "AUTH_PORT": str(port)}
        replicas.append(ServiceProcess("services.auth", port, env, tmp_path / f"{name}.log"))
    try:
        for replica in replicas:
            replica.start()
        jwks = [
            httpx.get(f"{replica.wait_ready().url}/.well-known/jwks.json").json()
            for replica in replicas
        ]
        assert jwks[0] == jwks[1]
        assert len(jwks[0]["keys"]) == 1
    finally:
        for replica in replicas:
            replica.stop()
        _drop_database(f"{prefix}_auth")
