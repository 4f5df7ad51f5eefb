"""Rate-limit policies: which apply to a request, under which keys, and the headers they produce.

The algorithm is a sliding-window log (a sorted set of admission times per key), run inside the
per-request Redis script (gate.py). Chosen over GCRA and window counters because it is exact:
at most `limit` admissions in ANY rolling window, no boundary burst (fixed window allows 2x)
and no approximation (sliding counter, GCRA's steady drip admits a few more during a long burst).
Its cost, O(limit) members per key, is small for the policies here (tens to hundreds).
"""

import hashlib
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import orjson

from gateway.settings import LimitPolicy, LimitScope


@dataclass(frozen=True, slots=True)
class LimitCheck:
    """One policy applied to one key."""

    policy: LimitPolicy
    key: str


@dataclass(frozen=True, slots=True)
class LimitState:
    """What the script says about one check after this request."""

    policy: LimitPolicy
    remaining: int
    reset_s: int


def policies_for(policies: Sequence[LimitPolicy], scope: LimitScope) -> list[LimitPolicy]:
    """The configured policies of one scope."""
    return [policy for policy in policies if policy.scope == scope]


def checks_for(
    policies: Iterable[LimitPolicy], *, ip: str, user: str | None, account: str | None
) -> list[LimitCheck]:
    """The (policy, key) pairs to enforce; a policy whose key is unknown is skipped."""
    values = {"ip": ip, "user": user, "account": account}
    checks = []
    for policy in policies:
        value = values[policy.key]
        if value:
            checks.append(LimitCheck(policy, f"rl:{policy.name}:{value}"))
    return checks


def login_account(body: bytes) -> str | None:
    """The normalised, hashed account a login body names (hashed: no emails in Redis keys)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    email = data.get("email") if isinstance(data, dict) else None
    if not isinstance(email, str) or not email.strip():
        return None
    return hashlib.sha256(email.strip().casefold().encode()).hexdigest()[:32]


class TrustedProxies:
    """Decides the client address: X-Forwarded-For is believed only from configured proxies."""

    def __init__(self, proxies: Iterable[str]) -> None:
        self._networks = [ipaddress.ip_network(proxy, strict=False) for proxy in proxies]

    def trusts(self, address: str) -> bool:
        """True if `address` is one of the configured proxies."""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._networks)

    def client_ip(self, peer: str, forwarded_for: bytes | None) -> str:
        """The rightmost address in the chain that is not a trusted proxy."""
        if not forwarded_for or not self.trusts(peer):
            return peer
        hops = [hop.strip() for hop in forwarded_for.decode("latin-1").split(",") if hop.strip()]
        for hop in reversed(hops):
            if not self.trusts(hop):
                return hop if _is_ip(hop) else peer
        return hops[0] if hops and _is_ip(hops[0]) else peer


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def policy_header(policies: Iterable[LimitPolicy]) -> bytes:
    """RateLimit-Policy (draft-ietf-httpapi-ratelimit-headers-11): `"name";q=limit;w=window`."""
    return ", ".join(f'"{p.name}";q={p.limit};w={p.window_s}' for p in policies).encode()


def ratelimit_header(states: Iterable[LimitState]) -> bytes:
    """RateLimit (draft-11): `"name";r=remaining;t=seconds-until-quota-resets`."""
    return ", ".join(f'"{s.policy.name}";r={s.remaining};t={s.reset_s}' for s in states).encode()


def retry_after(states: Iterable[LimitState]) -> int:
    """Seconds until every exhausted policy admits again (at least 1)."""
    return max([s.reset_s for s in states if s.remaining == 0] or [1], default=1) or 1
