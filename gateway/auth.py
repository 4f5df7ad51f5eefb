"""JWT at the edge: access tokens verified once then cached, and revocations recorded."""

import time

import aiohttp
import jwt
from cachetools import TLRUCache
from redis.asyncio import Redis

from common.clock import utcnow
from common.events import SessionsRevoked
from common.tokens import AccessClaims, KeysUnavailableError, TokenError, TokenVerifier


class EdgeVerifier:
    """Verifies bearer tokens; a verified token is remembered until it expires.

    Signature checks cost ~302 µs each (docs/bench-jwt.md); a hot token is verified once.
    Revocation is not cached here: the per-request Redis script checks it, so every process
    refuses at once.
    """

    def __init__(self, verifier: TokenVerifier, max_entries: int) -> None:
        self._verifier = verifier
        # Least recently used out first; an entry lapses when its token expires.
        self._cache: TLRUCache[str, AccessClaims, float] = TLRUCache(
            max_entries, _expiry, timer=time.time
        )

    async def verify(self, authorization: bytes | None) -> AccessClaims:
        """The claims of the bearer token in an Authorization header; TokenError otherwise."""
        if not authorization or authorization[:7].lower() != b"bearer ":
            raise TokenError("no bearer token")
        token = authorization[7:].strip().decode("latin-1")
        claims = self._cache.get(token)
        if claims is not None:
            return claims
        try:
            claims = await self._verifier.verify(token)
        except (aiohttp.ClientError, TimeoutError, ValueError, jwt.PyJWKError) as exc:
            raise KeysUnavailableError(str(exc)) from exc
        self._cache[token] = claims
        return claims


def _expiry(_token: str, claims: AccessClaims, _now: float) -> float:
    return float(claims.exp)


async def record_revocation(
    redis: "Redis", prefix: str, event: SessionsRevoked, max_token_lifetime_s: int
) -> None:
    """Remember a revocation in Redis for as long as a token it covers could still be used."""
    revoked_before = event.revoked_before.timestamp()
    ttl = int(revoked_before + max_token_lifetime_s - utcnow().timestamp())
    if ttl <= 0:
        return  # every token it covers has expired already (a replayed old event)
    async with redis.pipeline(transaction=True) as pipe:
        for session in event.session_ids:
            pipe.set(f"{prefix}rev:sid:{session}", 1, ex=ttl)
        if not event.session_ids:
            pipe.eval(_KEEP_LATEST, 1, f"{prefix}rev:user:{event.user_id}", revoked_before, ttl)
        await pipe.execute()


# Events may be replayed out of order: a user's cut-off only ever moves forward.
_KEEP_LATEST = """
local current = redis.call('GET', KEYS[1])
if (not current) or tonumber(current) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
end
"""
