"""Per-account login back-off in Redis (TTL'd keys: FerretDB has no TTL indexes).

Keys are derived from the normalised email whether or not an account exists, so the back-off
itself cannot reveal which emails are registered. Emails are hashed so none sits in Redis.
"""

import hashlib
import math

from redis.asyncio import Redis

from services.auth.domain import login_backoff_s


class LoginThrottle:
    """Counts failed logins per email and refuses attempts during a doubling, capped back-off."""

    def __init__(
        self, redis: Redis, prefix: str, *, free_attempts: int, cap_s: int, window_s: int
    ) -> None:
        self._redis = redis
        self._prefix = f"{prefix}auth:login:"
        self._free = free_attempts
        self._cap_s = cap_s
        self._window_s = window_s

    def _keys(self, email: str) -> tuple[str, str]:
        digest = hashlib.sha256(email.encode()).hexdigest()[:32]
        return f"{self._prefix}{digest}:fails", f"{self._prefix}{digest}:block"

    async def retry_after(self, email: str) -> int:
        """Seconds until this account accepts a login attempt again (0: now)."""
        _, block = self._keys(email)
        pttl = int(await self._redis.pttl(block))
        return math.ceil(pttl / 1000) if pttl > 0 else 0

    async def failed(self, email: str) -> int:
        """Record a miss; returns the back-off now in force, in seconds."""
        fails, block = self._keys(email)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.incr(fails)
            pipe.expire(fails, self._window_s)
            count, _ = await pipe.execute()
        # Blocked attempts are refused before they count, so the victim's lock-out stays bounded
        # by the cap and the count expires after a quiet window.
        backoff = login_backoff_s(int(count), self._free, self._cap_s)
        if backoff:
            await self._redis.set(block, b"1", px=backoff * 1000)
        return backoff

    async def succeeded(self, email: str) -> None:
        """Forget the account's misses."""
        await self._redis.delete(*self._keys(email))
