"""Response cache: per-user keys, bounded in-process L1 in front of Redis L2, single-flight misses.

A key holds the user's generation counter; bumping it (task events, or the user's own write
through the gateway) orphans every entry of that user in O(1), in every gateway process.
"""

import asyncio
import contextlib
import hashlib
import struct
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from urllib.parse import parse_qsl, urlencode

import orjson
from cachetools import TTLCache
from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.reply import Reply

# Response headers worth keeping with a cached body; everything else is per-exchange.
_KEPT = frozenset(
    {b"content-type", b"content-language", b"content-encoding", b"etag", b"cache-control"}
    | {b"last-modified", b"vary", b"link"}
)
# Outlives every cache entry, so an expired counter can never resurrect an entry it orphaned.
GENERATION_TTL_S = 86_400


def cache_key(
    user: str, generation: str, path: str, query: bytes, vary: Sequence[bytes | None]
) -> str:
    """User + generation + GET + path + normalised query + the Vary'd request headers.

    The query is decoded as Starlette decodes it, then ordered by name only: the sort is stable,
    so repeated parameters keep their order (the service reads the last one; `status=done&
    status=todo` and `status=todo&status=done` are different answers and different keys).
    """
    decoded = parse_qsl(query.decode("latin-1"), keep_blank_values=True)
    pairs = sorted(decoded, key=lambda pair: pair[0])
    material = orjson.dumps([path, urlencode(pairs), [(v or b"").decode("latin-1") for v in vary]])
    return f"c:{user}:{generation}:{hashlib.blake2b(material, digest_size=16).hexdigest()}"


def etag_of(body: bytes) -> bytes:
    """A strong validator derived from the body."""
    return b'"' + hashlib.blake2b(body, digest_size=16).hexdigest().encode() + b'"'


def etag_matches(if_none_match: bytes | None, etag: bytes | None) -> bool:
    """If-None-Match uses the weak comparison (RFC 9110 13.1.2)."""
    if not if_none_match or not etag:
        return False
    if if_none_match.strip() == b"*":
        return True
    mine = etag.removeprefix(b"W/")
    return any(tag.strip().removeprefix(b"W/") == mine for tag in if_none_match.split(b","))


def storable(reply: Reply, vary_allowed: Iterable[bytes], max_bytes: int) -> bool:
    """True if the upstream allows it and the key can describe every header it varies on."""
    if reply.status != 200 or len(reply.body) > max_bytes:
        return False
    control = (reply.header(b"cache-control") or b"").lower()
    if b"no-store" in control:
        return False
    vary = {v.strip().lower() for v in (reply.header(b"vary") or b"").split(b",") if v.strip()}
    return vary <= set(vary_allowed)


def with_validator(reply: Reply) -> Reply:
    """The reply with an ETag (the upstream's if it sent one) and revalidate-every-time caching."""
    headers = list(reply.headers)
    if reply.header(b"etag") is None:
        headers.append((b"etag", etag_of(reply.body)))
    if reply.header(b"cache-control") is None:
        # Per-user data: shared caches must not keep it, browsers revalidate with the ETag.
        headers.append((b"cache-control", b"private, no-cache"))
    return Reply(reply.status, headers, reply.body)


def encode(reply: Reply) -> bytes:
    """Serialise for Redis: status, header JSON length, header JSON, body."""
    kept = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in reply.headers if k in _KEPT]
    head = orjson.dumps(kept)
    return struct.pack(">HI", reply.status, len(head)) + head + reply.body


def decode(raw: bytes) -> Reply:
    """Inverse of encode."""
    status, size = struct.unpack_from(">HI", raw)
    head = orjson.loads(raw[6 : 6 + size])
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in head]
    return Reply(status, headers, raw[6 + size :])


class BoundedTTLCache(TTLCache[str, Reply, float]):
    """L1: entries live `ttl_s`; least recently used out first past `entries` or `max_bytes`."""

    def __init__(self, entries: int, max_bytes: int, ttl_s: int) -> None:
        super().__init__(max_bytes, ttl_s, timer=time.monotonic, getsizeof=_body_size)
        self._entries = entries

    def __setitem__(self, key: str, value: Reply) -> None:
        """Store, then evict past the entry bound (cachetools bounds the bytes)."""
        super().__setitem__(key, value)
        while len(self) > self._entries:
            self.popitem()


def _body_size(reply: Reply) -> int:
    return len(reply.body)


class ResponseCache:
    """L1 (bounded LRU in this process) over L2 (Redis, shared by every gateway process)."""

    def __init__(
        self, redis: "Redis", prefix: str, ttl_s: int, l1_entries: int, l1_bytes: int
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self._ttl = ttl_s
        self._l1 = BoundedTTLCache(l1_entries, l1_bytes, ttl_s)
        self._inflight: dict[str, asyncio.Future[Reply]] = {}

    async def get(self, key: str) -> Reply | None:
        """The cached reply, from L1 or else L2; None on a miss (or if Redis fails)."""
        reply = self._l1.get(key)
        if reply is not None:
            return reply
        try:
            raw = await self._redis.get(self._prefix + key)
        except RedisError:
            return None
        if not isinstance(raw, bytes):
            return None
        reply = decode(raw)
        self._remember(key, reply)
        return reply

    async def put(self, key: str, reply: Reply) -> None:
        """Store in both levels; a Redis failure only costs the L2 copy."""
        self._remember(key, reply)
        try:
            await self._redis.set(self._prefix + key, encode(reply), ex=self._ttl)
        except RedisError:
            return

    async def single_flight(self, key: str, fetch: Callable[[], Awaitable[Reply]]) -> Reply:
        """Concurrent misses on one key share one upstream call."""
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            reply = await fetch()
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here, so a waiter-less failure is not logged twice
            raise
        else:
            future.set_result(reply)
            return reply
        finally:
            del self._inflight[key]

    def forget_local(self) -> None:
        """Drop every L1 entry (an invalidation that could not reach Redis)."""
        self._l1.clear()

    def _remember(self, key: str, reply: Reply) -> None:
        with contextlib.suppress(ValueError):  # larger than all of L1: kept in L2 only
            self._l1[key] = reply


async def bump_generation(redis: "Redis", prefix: str, user: str) -> None:
    """Orphan every cached response of `user` (all processes, all levels)."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.incr(f"{prefix}gen:{user}")
        pipe.expire(f"{prefix}gen:{user}", GENERATION_TTL_S)
        await pipe.execute()
