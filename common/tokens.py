"""Access tokens: claims, signing (auth) and verification (gateway and services).

Verification follows RFC 8725: one pinned algorithm, explicit `typ`, `iss`/`aud` checked, keys only
from the configured JWKS (never from `jku`/`x5u`/`jwk` headers), bounded leeway.
"""

import asyncio
import json
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any, Protocol

import aiohttp
import jwt
from jwt import PyJWK
from jwt.utils import base64url_decode
from pydantic import BaseModel, ConfigDict, ValidationError

from common.problems import ProblemError

# RS256: verification runs on every request and costs ~302 µs vs ~543 µs for EdDSA
# (docs/bench-jwt.md); signing runs once per login/refresh, so verify speed decides.
ALGORITHM = "RS256"
ACCESS_TOKEN_TYPE = "at+jwt"  # noqa: S105 - RFC 9068 media type: refresh or ID tokens can never pass as access
MAX_LEEWAY_S = 30
# The longest access-token lifetime auth may be configured with: how long a revocation matters.
MAX_ACCESS_TTL_S = 3600
# The one 401 for a missing or refused access token, at the gateway and in every service.
UNAUTHORIZED_DETAIL = "missing or invalid access token"
WWW_AUTHENTICATE: Mapping[str, str] = MappingProxyType({"WWW-Authenticate": "Bearer"})
MAX_TOKEN_CHARS = 8192  # far above any token auth issues; bounds the work a header can cause
_FORBIDDEN_HEADERS = frozenset({"jku", "x5u", "jwk", "x5c", "crit"})
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class TokenError(Exception):
    """Any reason a token is not accepted. Callers answer one uniform 401, whatever the reason."""


class KeysUnavailableError(Exception):
    """The verification keys cannot be fetched now: no token can be judged, so answer 503."""


class AccessClaims(BaseModel):
    """The claims of a Taskbus access token."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    iss: str
    aud: str
    sub: str
    exp: int
    iat: int
    nbf: int
    jti: str
    sid: str
    # When the token's session began (the login), in ms since the epoch: a user-wide revocation
    # refuses every token of a session begun before its cut-off, however recently refreshed.
    # Tokens issued before the claim existed lack it (see session_started_ms).
    sst: int | None = None


def session_started_ms(claims: AccessClaims) -> int:
    """When the token's session began, in ms; for a token without `sst`, the start of its `iat`
    second, so it is refused unless it was issued wholly after a cut-off (fails closed)."""
    return claims.sst if claims.sst is not None else claims.iat * 1000


def epoch_ms(moment: datetime) -> int:
    """Whole ms since the epoch, floored (as BSON stores dates), in exact integer arithmetic so
    the gateway, the services and auth's database agree on which side of a cut-off a session
    lies."""
    return (moment - _EPOCH) // timedelta(milliseconds=1)


class Revocations(Protocol):
    """Which access tokens have been revoked (the services' in-process list, common.revocations)."""

    def refuses(self, claims: AccessClaims) -> bool:
        """True if the token's session was revoked; RevocationsUnknownError if not known yet."""


class RevocationsUnknownError(Exception):
    """The revocation list has not caught up yet: no token can be judged, so answer 503."""


class KeySource(Protocol):
    """Where verification keys come from (a JWKS endpoint, or a fixed set in tests)."""

    async def key(self, kid: str) -> PyJWK | None:
        """The key with this id, or None if it is not (or no longer) published."""


class StaticKeys:
    """A fixed JWKS (tests, or a key set mounted from a file)."""

    def __init__(self, jwks: Mapping[str, Any]) -> None:
        self._keys = _parse_jwks(jwks)

    async def key(self, kid: str) -> PyJWK | None:
        """Look the kid up in the fixed set."""
        return self._keys.get(kid)


class JwksCache:
    """Keys fetched from a JWKS endpoint, cached, refetched when an unknown `kid` appears.

    Refetches are rate limited so a flood of tokens with random kids cannot hammer auth.
    """

    def __init__(
        self,
        fetch: Callable[[], Awaitable[Mapping[str, Any]]],
        *,
        max_age_s: float = 300.0,
        min_refresh_interval_s: float = 5.0,
    ) -> None:
        self._fetch = fetch
        self._max_age_s = max_age_s
        self._min_interval_s = min_refresh_interval_s
        self._keys: dict[str, PyJWK] = {}
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()

    async def key(self, kid: str) -> PyJWK | None:
        """The cached key, refreshing on a miss (at most once per interval) or when stale."""
        now = time.monotonic()
        stale = now - self._fetched_at > self._max_age_s
        if kid in self._keys and not stale:
            return self._keys[kid]
        if stale or now - self._fetched_at > self._min_interval_s:
            await self._refresh(now)
        return self._keys.get(kid)

    async def _refresh(self, asked_at: float) -> None:
        async with self._lock:
            if self._fetched_at >= asked_at:  # another waiter refreshed meanwhile
                return
            try:
                self._keys = _parse_jwks(await self._fetch())
            finally:
                self._fetched_at = time.monotonic()


def jwks_source(
    static_jwks: Mapping[str, Any] | None,
    session: aiohttp.ClientSession,
    url: str,
    timeout_s: float = 3.0,
) -> KeySource:
    """A fixed key set when one is configured, else the auth service's JWKS fetched and cached."""
    if static_jwks is not None:
        return StaticKeys(static_jwks)

    async def fetch() -> Mapping[str, Any]:
        try:
            timeout = aiohttp.ClientTimeout(total=timeout_s)
            async with session.get(url, timeout=timeout) as response:
                response.raise_for_status()
                document = await response.json()
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise KeysUnavailableError(url) from exc
        if not isinstance(document, dict):
            raise KeysUnavailableError(f"{url} did not answer a JWKS document")
        return document

    return JwksCache(fetch)


def _parse_jwks(jwks: Mapping[str, Any]) -> dict[str, PyJWK]:
    keys = {}
    for entry in jwks.get("keys", []):
        if (
            entry.get("kid")
            and entry.get("alg", ALGORITHM) == ALGORITHM
            and entry.get("use", "sig") == "sig"
        ):
            keys[entry["kid"]] = PyJWK(entry, algorithm=ALGORITHM)
    return keys


class TokenVerifier:
    """Verifies access tokens against a key source, with claims pinned to one issuer/audience."""

    def __init__(self, keys: KeySource, *, issuer: str, audience: str, leeway_s: int = 10) -> None:
        if not 0 <= leeway_s <= MAX_LEEWAY_S:
            raise ValueError(f"leeway must be within 0..{MAX_LEEWAY_S}s")
        self._keys = keys
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway_s

    async def verify(self, token: str) -> AccessClaims:
        """The token's claims if it is a valid, current access token; TokenError otherwise."""
        if len(token) > MAX_TOKEN_CHARS:  # here, so the gateway and every service agree
            raise TokenError("token too long")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise TokenError("malformed token") from exc
        if header.get("alg") != ALGORITHM or header.get("typ") != ACCESS_TOKEN_TYPE:
            raise TokenError("wrong algorithm or type")
        if _FORBIDDEN_HEADERS & header.keys():
            raise TokenError("key-location headers are not honoured")
        kid = header.get("kid")
        key = await self._keys.key(kid) if isinstance(kid, str) else None
        if key is None:
            raise TokenError("unknown key")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["iss", "aud", "sub", "exp", "iat", "nbf", "jti", "sid"]},
            )
            _refuse_duplicate_members(token)
            return AccessClaims.model_validate(claims)
        except (jwt.PyJWTError, ValidationError, ValueError) as exc:
            raise TokenError("invalid token") from exc


def _refuse_duplicate_members(token: str) -> None:
    """ValueError if the header or the claims name a member twice: parsers disagree on which
    one counts (RFC 8259 section 4), so such a token means different things to different
    verifiers. Checked only once the signature holds, so forgeries cost nothing more."""
    for segment in token.split(".")[:2]:
        json.loads(base64url_decode(segment.encode()), object_pairs_hook=_unique_members)


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    members = dict(pairs)
    if len(members) != len(pairs):
        raise ValueError("duplicate member name")
    return members


async def verify_bearer(
    verifier: TokenVerifier, revocations: Revocations, authorization: str | None
) -> AccessClaims:
    """The claims of an `Authorization: Bearer` header's valid, unrevoked token; one uniform 401
    whatever is wrong, 503 when the keys or the revocations cannot be had (no token can be
    judged then)."""
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > MAX_TOKEN_CHARS:
        raise _unauthorized()
    try:
        claims = await verifier.verify(token)
        refused = revocations.refuses(claims)
    except TokenError:
        raise _unauthorized() from None
    except KeysUnavailableError:
        raise _cannot_judge("cannot verify access tokens right now") from None
    except RevocationsUnknownError:
        raise _cannot_judge("revocations are not known yet; retry shortly") from None
    if refused:
        raise _unauthorized()
    return claims


def _cannot_judge(detail: str) -> ProblemError:
    return ProblemError(503, detail, headers={"Retry-After": "5"})


def _unauthorized() -> ProblemError:
    return ProblemError(401, UNAUTHORIZED_DETAIL, headers=WWW_AUTHENTICATE)


def sign_access_token(
    private_key: Any,
    kid: str,
    *,
    issuer: str,
    audience: str,
    subject: str,
    session_id: str,
    ttl_s: int,
    now: float | None = None,
    session_started: datetime | None = None,
) -> tuple[str, AccessClaims]:
    """Sign a new access token for a session begun at `session_started` (by default now: a new
    login); returns the compact JWT and its claims."""
    at = now if now is not None else time.time()
    issued = int(at)
    began = epoch_ms(session_started) if session_started is not None else math.floor(at * 1000)
    claims = AccessClaims(
        iss=issuer,
        aud=audience,
        sub=subject,
        iat=issued,
        nbf=issued,
        exp=issued + ttl_s,
        jti=uuid.uuid4().hex,
        sid=session_id,
        sst=began,
    )
    token = jwt.encode(
        claims.model_dump(),
        private_key,
        algorithm=ALGORITHM,
        headers={"kid": kid, "typ": ACCESS_TOKEN_TYPE},
    )
    return token, claims
