"""The one Redis call per request: rate limits, session revocation and the user's cache generation.

One atomic script keeps the limiter exact across any number of gateway processes (check and
record cannot interleave) and pays a single round trip for all three questions. The clock is
Redis' own TIME, so processes with skewed clocks still share one window.
"""

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from redis.asyncio import Redis

from gateway.ratelimit import LimitCheck, LimitState

# KEYS: revoked-session, revoked-user, generation, then one sorted set per limit check.
# ARGV: unique member, token iat (-1: anonymous), then limit and window (ms) per check.
# Returns: {revoked, generation, admitted, remaining_1, reset_ms_1, remaining_2, ...}
GATE_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local iat = tonumber(ARGV[2])
if iat >= 0 then
  if redis.call('EXISTS', KEYS[1]) == 1 then return {1, '0', 0} end
  local before = redis.call('GET', KEYS[2])
  if before and iat < tonumber(before) then return {1, '0', 0} end
end
local gen = redis.call('GET', KEYS[3]) or '0'
local n = #KEYS - 3
local admitted = 1
local counts = {}
for i = 1, n do
  local key = KEYS[3 + i]
  local limit = tonumber(ARGV[1 + 2 * i])
  local window = tonumber(ARGV[2 + 2 * i])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  counts[i] = redis.call('ZCARD', key)
  if counts[i] >= limit then admitted = 0 end
end
local out = {0, gen, admitted}
for i = 1, n do
  local key = KEYS[3 + i]
  local limit = tonumber(ARGV[1 + 2 * i])
  local window = tonumber(ARGV[2 + 2 * i])
  if admitted == 1 then
    redis.call('ZADD', key, now, ARGV[1])
    redis.call('PEXPIRE', key, window)
    counts[i] = counts[i] + 1
  end
  local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  local reset = window
  if oldest[2] then reset = tonumber(oldest[2]) + window - now end
  out[#out + 1] = math.max(limit - counts[i], 0)
  out[#out + 1] = reset
end
return out
"""


@dataclass(frozen=True, slots=True)
class GateResult:
    """The script's answer for one request."""

    revoked: bool
    generation: str
    admitted: bool
    states: tuple[LimitState, ...]


@dataclass(frozen=True, slots=True)
class Identity:
    """Who asks: the token's user and session (None when anonymous)."""

    user: str
    session: str
    issued_at: int


class Gate:
    """Runs the per-request script against Redis."""

    def __init__(self, redis: "Redis", prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix
        self._script = redis.register_script(GATE_SCRIPT)

    def key(self, name: str) -> str:
        """A Redis key in this deployment's namespace."""
        return f"{self._prefix}{name}"

    async def check(self, identity: Identity | None, checks: Sequence[LimitCheck]) -> GateResult:
        """Revocation, generation and limits for one request, atomically."""
        if identity is None:
            head = [self.key("none")] * 3
            iat = -1
        else:
            head = [
                self.key(f"rev:sid:{identity.session}"),
                self.key(f"rev:user:{identity.user}"),
                self.key(f"gen:{identity.user}"),
            ]
            iat = identity.issued_at
        keys = head + [self.key(check.key) for check in checks]
        args: list[str | int] = [uuid.uuid4().hex, iat]
        for check in checks:
            args += [check.policy.limit, check.policy.window_s * 1000]
        raw = await self._script(keys=keys, args=args)
        if raw[0]:
            return GateResult(revoked=True, generation="0", admitted=False, states=())
        states = tuple(
            LimitState(check.policy, int(raw[3 + 2 * i]), -(-int(raw[4 + 2 * i]) // 1000))
            for i, check in enumerate(checks)
        )
        generation = raw[1].decode() if isinstance(raw[1], bytes) else str(raw[1])
        return GateResult(bool(raw[0]), generation, bool(raw[2]), states)
