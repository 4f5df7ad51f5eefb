"""The one Redis call per request: rate limits, session revocation and the user's cache generation.

One atomic script keeps the limiter exact across any number of gateway processes (check and
record cannot interleave) and pays a single round trip for all three questions. The clock is
Redis' own TIME, so processes with skewed clocks still share one window.
"""

import asyncio
import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from gateway.ratelimit import LimitCheck, LimitState

# KEYS: revoked-session, revoked-user, generation, epoch, then one sorted set per limit check.
# ARGV: unique member, token iat (-1: anonymous), when the token's session began (ms), then limit
# and window (ms) per check.
# Returns: {revoked, generation, admitted, remaining_1, reset_ms_1, remaining_2, ...}
# The epoch key holds "<id>:<lost_ms>" (EPOCH_SCRIPT sets "<id>:0" at start-up). Found missing,
# Redis has lost its state (a restart without persistence, a failover): every revocation it held
# is gone, so tokens issued before that moment are refused (their clients refresh, and auth
# checks the session in its database); the new id makes every generation new, so no cache entry
# from before (L1 included) can match a key again.
# A user-wide cut-off (seconds since the epoch, whole ms from auth) refuses every token whose
# session began before it, to the ms: an old session's refresh in the cut-off's second is refused,
# a login after it is not. It is rounded up to the ms (within 1 us, for float error), so a cut-off
# with finer precision fails closed.
GATE_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local iat = tonumber(ARGV[2])
local began = tonumber(ARGV[3])
local epoch = redis.call('GET', KEYS[4])
if not epoch then
  epoch = string.format('%d:%d', now, now)
  redis.call('SET', KEYS[4], epoch)
end
local id, lost = string.match(epoch, '^(%d+):(%d+)$')
if iat >= 0 then
  if iat * 1000 < tonumber(lost) then return {1, '0', 0} end
  if redis.call('EXISTS', KEYS[1]) == 1 then return {1, '0', 0} end
  local before = redis.call('GET', KEYS[2])
  if before and began < math.ceil(tonumber(before) * 1000 - 0.001) then return {1, '0', 0} end
end
local gen = (redis.call('GET', KEYS[3]) or '0') .. '.' .. id
local n = #KEYS - 4
local admitted = 1
local counts = {}
for i = 1, n do
  local key = KEYS[4 + i]
  local limit = tonumber(ARGV[2 + 2 * i])
  local window = tonumber(ARGV[3 + 2 * i])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  counts[i] = redis.call('ZCARD', key)
  if counts[i] >= limit then admitted = 0 end
end
local out = {0, gen, admitted}
for i = 1, n do
  local key = KEYS[4 + i]
  local limit = tonumber(ARGV[2 + 2 * i])
  local window = tonumber(ARGV[3 + 2 * i])
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

# A deployment's first start: an epoch with nothing lost (a running gateway that later finds
# it missing knows Redis forgot). NX, so a restarted gateway never hides a loss already found.
EPOCH_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('SET', KEYS[1], string.format('%d:0', now))
end
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
    session_started_ms: int


class ScriptBatcher:
    """Sends the script calls of concurrent requests as one pipeline per event-loop turn.

    redis-py does ~9k sequential calls/s on a connection but several times that pipelined
    (DESIGN.md). Each script still runs atomically on its own, so limits stay exact; only the
    per-call round trip and syscalls are shared.
    """

    def __init__(self, redis: "Redis", script: str) -> None:
        self._redis = redis
        self._script = script
        self._sha = hashlib.sha1(script.encode(), usedforsecurity=False).hexdigest()
        self._pending: list[tuple[list[str], list[str | int], asyncio.Future[Any]]] = []
        self._running: set[asyncio.Task[None]] = set()

    async def __call__(self, keys: list[str], args: list[str | int]) -> Any:
        """The script's result for these keys and arguments."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((keys, args, future))
        if len(self._pending) == 1:
            # Runs after every callback already queued for this turn: those join the batch.
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        task = asyncio.create_task(self._run(batch))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run(
        self, batch: list[tuple[list[str], list[str | int], asyncio.Future[Any]]]
    ) -> None:
        try:
            results = await self._execute([(keys, args) for keys, args, _ in batch])
        except Exception as exc:  # noqa: BLE001 - handed to every waiting request
            results = [exc] * len(batch)
        for (_, _, future), result in zip(batch, results, strict=True):
            if future.done():  # the request was cancelled meanwhile
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def _execute(self, calls: list[tuple[list[str], list[str | int]]]) -> list[Any]:
        results = await self._pipeline(calls)
        missing = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
        if missing:
            # Not executed at all (Redis restarted or flushed its scripts): load, run those again.
            await self._redis.script_load(self._script)
            retried = await self._pipeline([calls[i] for i in missing])
            for i, result in zip(missing, retried, strict=True):
                results[i] = result
        return results

    async def _pipeline(self, calls: list[tuple[list[str], list[str | int]]]) -> list[Any]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for keys, args in calls:
                pipe.evalsha(self._sha, len(keys), *keys, *args)
            return list(await pipe.execute(raise_on_error=False))


class Gate:
    """Runs the per-request script against Redis."""

    def __init__(self, redis: "Redis", prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix
        self._script = ScriptBatcher(redis, GATE_SCRIPT)

    async def open_epoch(self) -> None:
        """Create the epoch marker if this Redis has none (a first start); see GATE_SCRIPT."""
        await self._redis.eval(EPOCH_SCRIPT, 1, self.key("epoch"))

    def key(self, name: str) -> str:
        """A Redis key in this deployment's namespace."""
        return f"{self._prefix}{name}"

    async def check(self, identity: Identity | None, checks: Sequence[LimitCheck]) -> GateResult:
        """Revocation, generation and limits for one request, atomically."""
        if identity is None:
            head = [self.key("none")] * 3 + [self.key("epoch")]
            iat = began = -1
        else:
            head = [
                self.key(f"rev:sid:{identity.session}"),
                self.key(f"rev:user:{identity.user}"),
                self.key(f"gen:{identity.user}"),
                self.key("epoch"),
            ]
            iat, began = identity.issued_at, identity.session_started_ms
        keys = head + [self.key(check.key) for check in checks]
        args: list[str | int] = [uuid.uuid4().hex, iat, began]
        for check in checks:
            args += [check.policy.limit, check.policy.window_s * 1000]
        raw = await self._script(keys, args)
        if raw[0]:
            return GateResult(revoked=True, generation="0", admitted=False, states=())
        states = tuple(
            LimitState(check.policy, int(raw[3 + 2 * i]), -(-int(raw[4 + 2 * i]) // 1000))
            for i, check in enumerate(checks)
        )
        generation = raw[1].decode() if isinstance(raw[1], bytes) else str(raw[1])
        return GateResult(bool(raw[0]), generation, bool(raw[2]), states)
