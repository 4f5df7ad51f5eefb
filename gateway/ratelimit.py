"""Rate-limit policies: which apply to a request, under which keys, and the headers they produce.

The algorithm is a sliding-window log (a sorted set of admission times per key), run inside the
per-request Redis script (gate.py). Chosen over GCRA and window counters because it is exact:
at most `limit` admissions in ANY rolling window, no boundary burst (fixed window allows 2x)
and no approximation (sliding counter, GCRA's steady drip admits a few more during a long burst).
Its cost, O(limit) members per key, is small for the policies here (tens to hundreds).
"""

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import orjson

# Re-exported (the pipeline and its tests import it from here).
from common.forwarding import TrustedProxies as TrustedProxies  # noqa: PLC0414
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


def policy_header(policies: Iterable[LimitPolicy]) -> bytes:
    """RateLimit-Policy (draft-ietf-httpapi-ratelimit-headers-11): `"name";q=limit;w=window`."""
    return ", ".join(f'"{p.name}";q={p.limit};w={p.window_s}' for p in policies).encode()


def ratelimit_header(states: Iterable[LimitState]) -> bytes:
    """RateLimit (draft-11): `"name";r=remaining;t=seconds-until-quota-resets`."""
    return ", ".join(f'"{s.policy.name}";r={s.remaining};t={s.reset_s}' for s in states).encode()


def retry_after(states: Iterable[LimitState]) -> int:
    """Seconds until every exhausted policy admits again (at least 1)."""
    return max([s.reset_s for s in states if s.remaining == 0] or [1], default=1) or 1
