"""Access-token verification refuses every forgery RFC 8725 §3 describes that applies here."""

import base64
import json
import time

import jwt
import pytest

from common.tokens import JwksCache, TokenError, TokenVerifier
from tests.support.tokens import AUDIENCE, ISSUER, SigningKey

KEY = SigningKey.generate()


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


async def test_valid_token_yields_its_claims() -> None:
    token, claims = KEY.mint("user-1")
    assert await KEY.verifier().verify(token) == claims


async def test_alg_none_is_refused() -> None:
    token, _ = KEY.mint("user-1")
    forged = f"{_b64({'alg': 'none', 'typ': 'at+jwt', 'kid': KEY.kid})}.{token.split('.')[1]}."
    with pytest.raises(TokenError):
        await KEY.verifier().verify(forged)


async def test_hmac_with_the_public_key_as_secret_is_refused() -> None:
    _, claims = KEY.mint("user-1")
    public_pem = KEY.jwk()["n"].encode()
    forged = jwt.encode(
        claims.model_dump(),
        public_pem,
        algorithm="HS256",
        headers={"kid": KEY.kid, "typ": "at+jwt"},
    )
    with pytest.raises(TokenError):
        await KEY.verifier().verify(forged)


async def test_token_signed_by_another_key_with_the_same_kid_is_refused() -> None:
    impostor = SigningKey.generate(kid=KEY.kid)
    token, _ = impostor.mint("user-1")
    with pytest.raises(TokenError):
        await KEY.verifier().verify(token)


async def test_tampered_payload_is_refused() -> None:
    token, claims = KEY.mint("user-1")
    header, _, signature = token.split(".")
    payload = _b64(claims.model_dump() | {"sub": "admin"})
    with pytest.raises(TokenError):
        await KEY.verifier().verify(f"{header}.{payload}.{signature}")


async def test_expired_token_is_refused_beyond_leeway() -> None:
    token, _ = KEY.mint("user-1", ttl_s=60, now=time.time() - 120)
    with pytest.raises(TokenError):
        await KEY.verifier().verify(token)


async def test_wrong_typ_is_refused() -> None:
    _, claims = KEY.mint("user-1")
    token = jwt.encode(
        claims.model_dump(),
        KEY.private_key,
        algorithm="RS256",
        headers={"kid": KEY.kid, "typ": "refresh+jwt"},
    )
    with pytest.raises(TokenError):
        await KEY.verifier().verify(token)


async def test_wrong_audience_or_issuer_is_refused() -> None:
    _, claims = KEY.mint("user-1")
    for change in ({"aud": "other-api"}, {"iss": "https://evil.test"}):
        token = jwt.encode(
            claims.model_dump() | change,
            KEY.private_key,
            algorithm="RS256",
            headers={"kid": KEY.kid, "typ": "at+jwt"},
        )
        with pytest.raises(TokenError):
            await KEY.verifier().verify(token)


async def test_jku_header_is_refused_even_with_a_valid_signature() -> None:
    _, claims = KEY.mint("user-1")
    token = jwt.encode(
        claims.model_dump(),
        KEY.private_key,
        algorithm="RS256",
        headers={"kid": KEY.kid, "typ": "at+jwt", "jku": "https://evil.test/jwks"},
    )
    with pytest.raises(TokenError):
        await KEY.verifier().verify(token)


async def test_leeway_above_30s_is_not_allowed() -> None:
    with pytest.raises(ValueError, match="leeway"):
        TokenVerifier(KEY.verifier()._keys, issuer=ISSUER, audience=AUDIENCE, leeway_s=31)


async def test_jwks_cache_refetches_on_unknown_kid_but_rate_limits() -> None:
    rotated = SigningKey.generate(kid="next-key")
    served: dict[str, object] = {"keys": [KEY.jwk()]}
    fetches = 0

    async def fetch() -> dict[str, object]:
        nonlocal fetches
        fetches += 1
        return served

    cache = JwksCache(fetch, min_refresh_interval_s=0.0)
    verifier = TokenVerifier(cache, issuer=ISSUER, audience=AUDIENCE)
    await verifier.verify(KEY.mint("u")[0])
    served = {"keys": [KEY.jwk(), rotated.jwk()]}
    await verifier.verify(rotated.mint("u")[0])
    assert fetches == 2

    limited = JwksCache(fetch, min_refresh_interval_s=60.0)
    await limited.key("unknown-1")
    await limited.key("unknown-2")
    assert fetches == 3
