"""The JWT attack matrix (RFC 8725, issue 12): every forged or misused access token, at every door.

Each case is one token (or Authorization header) an attacker can make from what they can see: a
real access token of their own, the published public key, their refresh and reset tokens. Each
must get the one uniform 401 problem at the gateway AND at
the auth, tasks and notifier ports, byte for byte the body of a request without any token, so no
answer tells an attacker which check refused it.
"""

import base64
import hashlib
import hmac
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding

from common.problems import PROBLEM_JSON
from common.tokens import ACCESS_TOKEN_TYPE, ALGORITHM
from services.auth.keys import generate_key
from tests.support.auth import TOKEN_DOORS, register, signing_keys_env, unique_email
from tests.support.mail import messages_to
from tests.support.system import running_system
from tests.support.tokens import SigningKey
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e
DOORS = TOKEN_DOORS
RESET_LINK = re.compile(r"https?://\S+?token=([A-Za-z0-9%_\-.~]+)")
Headers = list[tuple[str, str]]


@dataclass
class Stack:
    urls: dict[str, str]  # door -> base URL
    key: SigningKey  # auth's real signing key
    access: str  # a real access token of the attacker's own account
    refresh: str
    reset: str  # a real password-reset token, mailed to the attacker
    victim: str  # another account's user id


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _forge(header: str | dict[str, Any], claims: str | dict[str, Any], sign: Any) -> str:
    """A compact JWS of raw segments (str: sent as is, so malformed JSON stays malformed)."""
    parts = [h if isinstance(h, str) else json.dumps(h) for h in (header, claims)]
    signing_input = ".".join(_b64(p.encode()) for p in parts)
    return f"{signing_input}.{_b64(sign(signing_input.encode()))}"


class Forger:
    """Makes tokens from the attacker's real one: same claims and header unless told."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.claims: dict[str, Any] = jwt.decode(stack.access, options={"verify_signature": False})
        # kid and typ; the alg is each forgery's own (PyJWT signs with a header's alg if given).
        header = jwt.get_unverified_header(stack.access)
        self.header: dict[str, Any] = {k: v for k, v in header.items() if k != "alg"}
        self.private = stack.key.private_key

    def rs256(self, claims: dict[str, Any] | None = None, **header: Any) -> str:
        """Signed with auth's real key (as only a key holder could) under a changed header."""
        alg = header.pop("alg", ALGORITHM)
        body = claims if claims is not None else self.claims
        return jwt.encode(body, self.private, alg, headers={**self.header, **header})

    def claims_with(self, **changes: Any) -> str:
        """The real key's signature over changed claims (what a forged payload would need)."""
        return self.rs256({**self.claims, **changes})

    def claims_without(self, name: str) -> str:
        """The real key's signature over the claims less one."""
        return self.rs256({k: v for k, v in self.claims.items() if k != name})

    def raw(self, header: str, claims: str) -> str:
        """Raw JSON text for the segments, RS256-signed with the real key."""
        return _forge(header, claims, self._rsa_sign)

    @property
    def signed_header(self) -> str:
        """The real token's header as JSON text."""
        return json.dumps({"alg": ALGORITHM, **self.header})

    def raw_header(self, **header: Any) -> str:
        """RS256-signed with the real key under a header PyJWT would refuse to write."""
        return self.raw(
            json.dumps({"alg": ALGORITHM, **self.header, **header}), json.dumps(self.claims)
        )

    def _rsa_sign(self, data: bytes) -> bytes:
        return self.private.sign(data, padding.PKCS1v15(), hashes.SHA256())

    def relabelled(self, alg: str) -> str:
        """The real token with only its header's alg changed, the real signature kept."""
        _, payload, signature = self.stack.access.split(".")
        head = _b64(json.dumps({**self.header, "alg": alg}).encode())
        return f"{head}.{payload}.{signature}"

    def alg_none(self, spelling: str) -> str:
        """Unsigned, as RFC 7519 section 6 allows and RFC 8725 section 3.1 forbids accepting."""
        return _forge({**self.header, "alg": spelling}, self.claims, lambda _: b"")

    def hs256_with_public_key(self) -> str:
        """Key confusion (RFC 8725 section 2.1): HMAC keyed with the published RSA public key."""
        public = self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        header = {**self.header, "alg": "HS256"}
        return _forge(header, self.claims, lambda d: hmac.new(public, d, hashlib.sha256).digest())

    def es256(self) -> str:
        """A valid ES256 signature by a key of the attacker's, under auth's kid."""
        return jwt.encode(
            self.claims, ec.generate_private_key(ec.SECP256R1()), "ES256", headers=self.header
        )

    def embedded_jwk(self) -> str:
        """CVE-2018-0114 style: signed by the attacker's key, which the header itself carries."""
        attacker = SigningKey.generate("attacker")
        return jwt.encode(
            self.claims,
            attacker.private_key,
            ALGORITHM,
            headers={**self.header, "jwk": attacker.jwk()},
        )

    def at(self, offset_s: int, *names: str) -> str:
        """The claims' times `names` moved to now + offset."""
        now = int(time.time())
        return self.claims_with(**dict.fromkeys(names, now + offset_s))

    def tampered(self) -> str:
        """The real signature over the attacker's claims, payload swapped for the victim's."""
        head, _, signature = self.stack.access.split(".")
        payload = _b64(json.dumps({**self.claims, "sub": self.stack.victim}).encode())
        return f"{head}.{payload}.{signature}"


def _bearer(token: str) -> Headers:
    return [("Authorization", f"Bearer {token}")]


# name -> the Authorization headers of the attack (an empty list: no header at all).
ATTACKS: dict[str, Callable[[Forger], Headers]] = {
    "alg-none": lambda f: _bearer(f.alg_none("none")),
    "alg-None": lambda f: _bearer(f.alg_none("None")),
    "alg-NONE": lambda f: _bearer(f.alg_none("NONE")),
    "alg-none-keeping-the-real-signature": lambda f: _bearer(f.relabelled("none")),
    "hs256-keyed-with-the-rsa-public-key": lambda f: _bearer(f.hs256_with_public_key()),
    "rs512-with-the-real-key": lambda f: _bearer(f.rs256(alg="RS512")),
    "ps256-with-the-real-key": lambda f: _bearer(f.rs256(alg="PS256")),
    "es256-under-the-real-kid": lambda f: _bearer(f.es256()),
    "another-key-same-kid": lambda f: _bearer(
        jwt.encode(f.claims, SigningKey.generate().private_key, ALGORITHM, headers=f.header)
    ),
    "unknown-kid": lambda f: _bearer(f.rs256(kid="no-such-key")),
    "no-kid": lambda f: _bearer(
        jwt.encode(f.claims, f.private, ALGORITHM, headers={"typ": ACCESS_TOKEN_TYPE})
    ),
    "kid-path-traversal": lambda f: _bearer(f.rs256(kid="../../../../../../dev/null")),
    "kid-sql-injection": lambda f: _bearer(f.rs256(kid="x' UNION SELECT 'secret' --")),
    "kid-not-a-string": lambda f: _bearer(f.raw_header(kid={"$ne": None})),
    "jku-elsewhere": lambda f: _bearer(f.rs256(jku="https://attacker.example/jwks.json")),
    "x5u-elsewhere": lambda f: _bearer(f.rs256(x5u="https://attacker.example/cert.pem")),
    "jwk-embedded": lambda f: _bearer(f.embedded_jwk()),
    "x5c-embedded": lambda f: _bearer(
        f.rs256(x5c=["MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"])
    ),
    "crit-header": lambda f: _bearer(f.rs256(crit=["exp"])),
    "typ-jwt-id-like-token": lambda f: _bearer(
        f.rs256({**f.claims, "nonce": "n", "azp": "web", "auth_time": f.claims["iat"]}, typ="JWT")
    ),
    "no-typ": lambda f: _bearer(
        jwt.encode(f.claims, f.private, ALGORITHM, headers={"kid": f.header["kid"]})
    ),
    "refresh-token-as-access": lambda f: _bearer(f.stack.refresh),
    "reset-token-as-access": lambda f: _bearer(f.stack.reset),
    "expired-beyond-leeway": lambda f: _bearer(f.at(-100, "exp")),
    "nbf-in-the-future": lambda f: _bearer(f.at(600, "nbf")),
    "iat-in-the-future-beyond-leeway": lambda f: _bearer(f.at(600, "iat")),
    "wrong-iss": lambda f: _bearer(f.claims_with(iss="https://attacker.example")),
    "wrong-aud": lambda f: _bearer(f.claims_with(aud="another-api")),
    "missing-sub": lambda f: _bearer(f.claims_without("sub")),
    "missing-exp": lambda f: _bearer(f.claims_without("exp")),
    "missing-jti": lambda f: _bearer(f.claims_without("jti")),
    "missing-sid": lambda f: _bearer(f.claims_without("sid")),
    "signature-stripped": lambda f: _bearer(f.stack.access.rsplit(".", 1)[0] + "."),
    "two-segments": lambda f: _bearer(f.stack.access.rsplit(".", 1)[0]),
    "tampered-payload": lambda f: _bearer(f.tampered()),
    "header-not-json": lambda f: _bearer(f.raw("not json", json.dumps(f.claims))),
    "payload-not-json": lambda f: _bearer(f.raw(f.signed_header, "not json")),
    "payload-a-json-list": lambda f: _bearer(f.raw(f.signed_header, "[1, 2]")),
    "duplicate-header-keys": lambda f: _bearer(
        f.raw(
            f'{{"alg": "none", "typ": "{ACCESS_TOKEN_TYPE}", "kid": "{f.header["kid"]}", '
            f'"alg": "{ALGORITHM}"}}',  # "none" to a first-wins parser
            json.dumps(f.claims),
        )
    ),
    "duplicate-claim-keys": lambda f: _bearer(
        f.raw(f.signed_header, json.dumps(f.claims)[:-1] + f', "sub": "{f.stack.victim}"}}')
    ),
    "huge-token": lambda f: _bearer("eyJ" + "a" * 20_000),
    "oversized-signed-token": lambda f: _bearer(f.claims_with(pad="p" * 9_000)),
    "basic-scheme": lambda f: [("Authorization", f"Basic {f.stack.access}")],
    "no-scheme": lambda f: [("Authorization", f.stack.access)],
    "empty-bearer": lambda f: [("Authorization", "Bearer")],
    "garbage": lambda f: _bearer("not.a.jwt"),
    "two-authorization-headers-valid-first": lambda f: [
        *_bearer(f.stack.access),
        *_bearer(f.alg_none("none")),
    ],
    "two-authorization-headers-forged-first": lambda f: [
        *_bearer(f.alg_none("none")),
        *_bearer(f.stack.access),
    ],
    "token-in-query-string": lambda f: [],  # sent as ?access_token= (see _request)
}
QUERY_TOKEN_CASES = frozenset({"token-in-query-string"})


@pytest.fixture(scope="module")
async def stack() -> AsyncIterator[Stack]:
    prefix = f"jwt{uuid.uuid4().hex[:10]}"
    auth_key = generate_key(f"{prefix}-key")
    env = {"AUTH_SIGNING_KEYS": signing_keys_env(auth_key)}
    async with running_system(prefix, ["auth", "tasks", "notifier", "gateway"], **env) as procs:
        urls = {door: procs[door].url for door in DOORS}
        async with httpx.AsyncClient(base_url=urls["gateway"], timeout=30) as client:
            email = unique_email()
            own = await register(client, email)
            victim = await register(client)
            asked = await client.post("/api/auth/password-reset", json={"email": email})
            assert asked.status_code == 202, asked.text
            reset = await eventually(lambda: _mailed_reset_token(email), what="the reset mail")
        yield Stack(
            urls,
            SigningKey(auth_key.kid, auth_key.private_key),
            own["access_token"],
            own["refresh_token"],
            reset,
            victim["user"]["id"],
        )


def _mailed_reset_token(email: str) -> str | None:
    """The token of the reset link mailed to `email` (the welcome mail has none)."""
    for mail in messages_to(email):
        text = str(mail.get_body(("plain",)).get_content())  # type: ignore[union-attr]
        for found in RESET_LINK.findall(text):
            return unquote(found)
    return None


async def _request(
    stack: Stack, door: str, headers: Headers, query_token: bool = False
) -> httpx.Response:
    params = {"access_token": stack.access, "token": stack.access} if query_token else None
    async with httpx.AsyncClient(base_url=stack.urls[door], timeout=10) as client:
        return await client.get(DOORS[door], headers=headers, params=params)


@pytest.fixture(scope="module")
async def refusals(stack: Stack) -> dict[str, bytes]:
    """Each door's answer to a request with no token at all: what every attack must get."""
    answers = {}
    for door in DOORS:
        missing = await _request(stack, door, [])
        assert missing.status_code == 401
        answers[door] = missing.content
    return answers


async def test_the_real_token_and_the_forgers_own_signing_are_accepted_at_every_door(
    stack: Stack,
) -> None:
    # Without this the matrix would pass against a stack that refuses everything, or a forger
    # whose tokens fail for some reason other than the attack each case names.
    forger = Forger(stack)
    unchanged = (
        stack.access,
        forger.rs256(),
        forger.raw(forger.signed_header, json.dumps(forger.claims)),
    )
    for token in unchanged:
        for door in DOORS:
            served = await _request(stack, door, _bearer(token))
            assert served.status_code == 200, (door, served.text)


@pytest.mark.parametrize("attack", list(ATTACKS))
async def test_every_forged_or_misused_token_gets_the_one_401_at_every_door(
    stack: Stack, refusals: dict[str, bytes], attack: str
) -> None:
    headers = ATTACKS[attack](Forger(stack))
    for door in DOORS:
        answer = await _request(stack, door, headers, attack in QUERY_TOKEN_CASES)
        if attack == "huge-token" and door == "gateway":
            # The edge refuses the header section before reading any token (gateway/app.py).
            assert answer.status_code == 431, answer.text
            assert answer.headers["content-type"] == PROBLEM_JSON
            continue
        assert answer.status_code == 401, (door, answer.text)
        assert answer.headers["content-type"] == PROBLEM_JSON, door
        assert answer.headers["www-authenticate"] == "Bearer", door
        assert answer.content == refusals[door], door  # uniform: no hint which check failed


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "bEaReR"])
async def test_the_scheme_is_case_insensitive_alike_at_every_door(
    stack: Stack, scheme: str
) -> None:
    # RFC 9110 section 11.1: the auth scheme is case-insensitive. What matters for security is
    # that the gateway and every service agree, so no door accepts what another refuses.
    for door in DOORS:
        answer = await _request(stack, door, [("Authorization", f"{scheme} {stack.access}")])
        assert answer.status_code == 200, (door, answer.text)
