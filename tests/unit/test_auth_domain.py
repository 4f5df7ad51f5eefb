"""Auth rules without I/O: refresh verdicts, back-off, password policy, hashing, keys, settings."""

import json
from datetime import UTC, datetime, timedelta

import pytest
from argon2 import PasswordHasher
from pydantic import SecretStr, ValidationError

from services.auth.domain import (
    AuthFailedError,
    Passwords,
    PolicyError,
    RefreshVerdict,
    Session,
    User,
    check_password,
    hash_secret,
    judge_refresh,
    login_backoff_s,
    new_refresh_token,
    parse_refresh_token,
)
from services.auth.keys import SigningKey, generate_key, parse_key_ring
from services.auth.settings import AuthSettings
from tests.support.auth import signing_keys_env
from tests.support.kafka_auth import PRODUCTION_KAFKA

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
OWASP = {"memory_kib": 19456, "time_cost": 2, "parallelism": 1, "concurrency": 2}


def _user(**changes: object) -> User:
    base = User(
        id="u1", email="a@example.com", name="A", password_hash="h", created_at=NOW
    ).model_dump()
    return User.model_validate(base | changes)


def _session(**changes: object) -> Session:
    base = Session(
        id="s" * 32,
        user_id="u1",
        current_hash=hash_secret("current"),
        previous_hash=hash_secret("previous"),
        rotated_at=NOW - timedelta(seconds=3),
        spent=(hash_secret("older"),),
        created_at=NOW - timedelta(hours=1),
        expires_at=NOW + timedelta(days=1),
    ).model_dump()
    return Session.model_validate(base | changes)


@pytest.mark.parametrize(
    ("secret", "session", "expected"),
    [
        ("current", _session(), RefreshVerdict.ROTATE),
        ("previous", _session(), RefreshVerdict.GRACE),
        ("previous", _session(rotated_at=NOW - timedelta(seconds=11)), RefreshVerdict.REUSE),
        ("older", _session(), RefreshVerdict.REUSE),
        ("never-issued", _session(), RefreshVerdict.REJECT),
        ("current", _session(revoked=True), RefreshVerdict.REJECT),
        ("current", _session(expires_at=NOW), RefreshVerdict.REJECT),
        ("older", _session(revoked=True), RefreshVerdict.REJECT),
    ],
)
def test_refresh_verdicts(secret: str, session: Session, expected: RefreshVerdict) -> None:
    assert judge_refresh(session, hash_secret(secret), _user(), NOW, 10) is expected


def test_sessions_created_before_the_users_cutoff_are_rejected() -> None:
    cut = _user(sessions_valid_after=NOW - timedelta(minutes=1))
    assert judge_refresh(_session(), hash_secret("current"), cut, NOW, 10) is RefreshVerdict.REJECT
    later = _session(created_at=NOW - timedelta(seconds=30))
    assert judge_refresh(later, hash_secret("current"), cut, NOW, 10) is RefreshVerdict.ROTATE


def test_refresh_tokens_parse_back_to_their_family_and_hash() -> None:
    token, stored = new_refresh_token("f" * 32)
    assert parse_refresh_token(token) == ("f" * 32, stored)
    assert stored != token.split(".")[1]
    for bad in ("", "no-dot", f"{'f' * 32}.short", f"{'f' * 31}.{'x' * 43}", "f" * 32 + "." * 300):
        with pytest.raises(AuthFailedError):
            parse_refresh_token(bad)


def test_backoff_doubles_after_the_free_attempts_and_is_capped() -> None:
    delays = [login_backoff_s(n, free_attempts=5, cap_s=300) for n in range(1, 20)]
    assert delays[:4] == [0, 0, 0, 0]
    assert delays[4:9] == [1, 2, 4, 8, 16]
    assert max(delays) == 300


@pytest.mark.parametrize(
    ("password", "reason"),
    [
        ("short", "characters"),
        ("x" * 129, "characters"),
        ("Ann.Smith@Example.com", "email"),
        ("ann.smith", "email"),
    ],
)
def test_password_policy(password: str, reason: str) -> None:
    with pytest.raises(PolicyError, match=reason) as caught:
        check_password(password, "ann.smith@example.com")
    assert caught.value.field == "password"


def test_password_policy_accepts_a_reasonable_password() -> None:
    check_password("correct horse battery", "ann.smith@example.com")


async def test_hashes_are_argon2id_at_owasp_parameters_and_verify() -> None:
    passwords = Passwords(**OWASP)
    stored = await passwords.hash("correct horse battery")
    assert stored.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert await passwords.verify(stored, "correct horse battery")
    assert not await passwords.verify(stored, "wrong")
    assert not await passwords.verify("not a hash", "wrong")
    assert not passwords.needs_rehash(stored)
    weaker = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash("pw")
    assert passwords.needs_rehash(weaker)


async def test_unknown_account_costs_one_argon2_verification_like_a_wrong_password() -> None:
    """Uniform time is structural: both paths run exactly one argon2 verify of the same cost."""
    passwords = Passwords(**OWASP)
    stored = await passwords.hash("correct horse battery")
    calls: list[str] = []
    real = passwords._hasher

    class Counting:
        def hash(self, password: str) -> str:
            return real.hash(password)

        def verify(self, hash_: str, password: str) -> bool:
            calls.append(hash_.split("$")[3])
            return real.verify(hash_, password)

    passwords._hasher = Counting()  # type: ignore[assignment]
    assert not await passwords.verify(stored, "wrong")
    assert not await passwords.verify(None, "wrong")
    assert calls == ["m=19456,t=2,p=1", "m=19456,t=2,p=1"]


def test_key_ring_from_env_publishes_current_and_unretired_previous_keys() -> None:
    current, previous, retired = (
        generate_key("k3"),
        SigningKey("k2", generate_key().private_key, NOW + timedelta(minutes=20)),
        SigningKey("k1", generate_key().private_key, NOW - timedelta(minutes=1)),
    )
    ring = parse_key_ring(signing_keys_env(current, previous, retired))
    assert ring.current.kid == "k3"
    assert [k["kid"] for k in ring.jwks(NOW)["keys"]] == ["k3", "k2"]
    assert [k["kid"] for k in ring.jwks(NOW + timedelta(hours=1))["keys"]] == ["k3"]
    assert all("d" not in key for key in ring.jwks(NOW)["keys"])


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("[]", "no key"),
        ("not json", "json"),
        ('[{"kid": "a", "private_key": "-----BEGIN nonsense"}]', "PEM"),
    ],
)
def test_bad_signing_key_config_is_refused(raw: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_key_ring(raw)


def test_private_key_pem_spelling_is_accepted() -> None:
    key = generate_key("k8s")
    ring = parse_key_ring(json.dumps([{"kid": key.kid, "private_key_pem": key.pem()}]))
    assert ring.current.public_jwk() == key.public_jwk()


def test_duplicate_kids_are_refused() -> None:
    key = generate_key("same")
    with pytest.raises(ValueError, match="duplicate"):
        parse_key_ring(signing_keys_env(key, key))


def test_production_refuses_to_start_without_signing_keys() -> None:
    with pytest.raises(ValidationError, match="AUTH_SIGNING_KEYS"):
        AuthSettings(environment="production", **PRODUCTION_KAFKA)
    keys = SecretStr(signing_keys_env(generate_key()))
    with pytest.raises(ValidationError, match="TASKBUS_RESET_SEAL_KEY"):
        AuthSettings(environment="production", signing_keys=keys, **PRODUCTION_KAFKA)
    seal = SecretStr("r" * 40)
    AuthSettings(
        environment="production", signing_keys=keys, reset_seal_key=seal, **PRODUCTION_KAFKA
    )


def test_argon2_parameters_below_owasp_are_refused() -> None:
    with pytest.raises(ValidationError):
        AuthSettings(argon2_memory_kib=8192)
    with pytest.raises(ValidationError):
        AuthSettings(argon2_time_cost=1)
