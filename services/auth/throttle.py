"""Login back-off in Redis that protects accounts without handing attackers a lock-out switch.

Three counters of failed passwords, each TTL'd (FerretDB has no TTL indexes):

- per (account, address): after `free_attempts` misses that address is refused for this account,
  doubling, capped at `cap_s`: the guesser is slowed, nobody else is;
- per account, from any address: past `account_free` misses the account is *guarded* (same
  doubling, same cap): while guarded, only addresses with no miss on it are heard, so a botnet
  gets one guess per address while the owner, from a clean address, still logs in;
- per address, over every account: past `ip_free` misses the address is refused (credential
  stuffing), doubling, capped.

Refused attempts are not counted, so no delay grows past `cap_s` (the README's 5 minutes).
Keys hash the normalised email (and the address) whether or not an account exists, so the
back-off cannot reveal which emails are registered and no address sits in Redis. Redis losing
these keys forgets the misses: guessing starts again from the free attempts, nothing locks.
"""

import hashlib
import math

from redis.asyncio import Redis

from services.auth.domain import login_backoff_s


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:32]


class LoginThrottle:
    """Counts failed logins per account, per address and per pair; says how long to refuse."""

    def __init__(
        self,
        redis: Redis,
        prefix: str,
        *,
        free_attempts: int,
        cap_s: int,
        window_s: int,
        account_free: int = 10,
        ip_free: int = 20,
        resets_per_ip_hour: int = 20,
        reset_mails_per_address_hour: int = 3,
    ) -> None:
        self._redis = redis
        self._prefix = f"{prefix}auth:login:"
        self._free = free_attempts
        self._cap_s = cap_s
        self._window_s = window_s
        self._account_free = account_free
        self._ip_free = ip_free
        self._resets_per_ip = resets_per_ip_hour
        self._mails_per_address = reset_mails_per_address_hour

    def _keys(self, email: str, ip: str) -> dict[str, str]:
        account, address = _digest(email), _digest(ip)
        p = self._prefix
        return {
            "pair": f"{p}pair:{account}:{address}",
            "pair_block": f"{p}pair:{account}:{address}:block",
            "account": f"{p}acct:{account}",
            "guard": f"{p}acct:{account}:guard",
            "ip": f"{p}ip:{address}",
            "ip_block": f"{p}ip:{address}:block",
        }

    async def retry_after(self, email: str, ip: str) -> int:
        """Seconds until `ip` may try a password on this account again (0: now)."""
        keys = self._keys(email, ip)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.pttl(keys["pair_block"])
            pipe.pttl(keys["ip_block"])
            pipe.pttl(keys["guard"])
            pipe.exists(keys["pair"])
            pair_ms, ip_ms, guard_ms, missed_here = await pipe.execute()
        # A guarded account still hears addresses that never missed on it (the owner's).
        waits = [int(pair_ms), int(ip_ms), int(guard_ms) if int(missed_here) else 0]
        longest = max(waits)
        return math.ceil(longest / 1000) if longest > 0 else 0

    async def failed(self, email: str, ip: str) -> int:
        """Record a miss by `ip`; returns the back-off now in force for it, in seconds."""
        keys = self._keys(email, ip)
        async with self._redis.pipeline(transaction=True) as pipe:
            for name in ("pair", "account", "ip"):
                pipe.incr(keys[name])
                pipe.expire(keys[name], self._window_s)
            pair, _, account, _, address, _ = await pipe.execute()
        backoffs = {
            "pair_block": login_backoff_s(int(pair), self._free, self._cap_s),
            "guard": login_backoff_s(int(account), self._account_free, self._cap_s),
            "ip_block": login_backoff_s(int(address), self._ip_free, self._cap_s),
        }
        async with self._redis.pipeline(transaction=False) as pipe:
            for name, seconds in backoffs.items():
                if seconds:
                    pipe.set(keys[name], b"1", px=seconds * 1000)
            await pipe.execute()
        return max(backoffs["pair_block"], backoffs["ip_block"], backoffs["guard"])

    async def succeeded(self, email: str, ip: str) -> None:
        """Forget this address's misses on the account (the guard and other addresses stay)."""
        keys = self._keys(email, ip)
        await self._redis.delete(keys["pair"], keys["pair_block"])

    async def forget_account(self, email: str) -> None:
        """Lift the account's guard (a password reset proved the owner holds the mailbox)."""
        keys = self._keys(email, "")
        await self._redis.delete(keys["account"], keys["guard"])

    async def _hourly(self, key: str, limit: int) -> int:
        """Count one in the key's hour; seconds until it admits again when past `limit`, else 0."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, 3600, nx=True)
            pipe.ttl(key)
            count, _, ttl = await pipe.execute()
        return max(int(ttl), 1) if int(count) > limit else 0

    async def reset_request_wait(self, ip: str) -> int:
        """Seconds this address must wait before asking for another reset mail (0: now)."""
        return await self._hourly(f"{self._prefix}reset-ip:{_digest(ip)}", self._resets_per_ip)

    async def reset_mail_allowed(self, email: str) -> bool:
        """Whether one more reset mail may go to this address this hour (a mailbox flood cap)."""
        key = f"{self._prefix}reset-mail:{_digest(email)}"
        return not await self._hourly(key, self._mails_per_address)
