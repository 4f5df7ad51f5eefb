"""Micro-benchmark of the gateway's in-process caches: token-cache hit, L1 hit, L1 put + evict.

Run: `uv run --frozen --no-sync python -m bench.bench_gateway_caches` (a few seconds, no infra).
Prints nanoseconds per call; compare against the hot path's ~500 µs per request
(docs/bench-gateway.md), not against each other.
"""

import asyncio
import time
from collections.abc import Awaitable, Callable

from gateway.auth import EdgeVerifier
from gateway.cache import ResponseCache
from gateway.reply import Reply
from tests.support.tokens import SigningKey

CALLS = 200_000


class NoRedis:
    """L2 that never answers: only L1 is measured."""

    async def get(self, key: str) -> None:
        """Always a miss."""

    async def set(self, key: str, value: bytes, ex: int) -> None:
        """Drop the value."""


async def per_call_ns(call: Callable[[int], Awaitable[object]]) -> float:
    """Mean nanoseconds of `call(i)` over CALLS calls."""
    started = time.perf_counter()
    for i in range(CALLS):
        await call(i)
    return (time.perf_counter() - started) / CALLS * 1e9


async def main() -> None:
    """Measure and print the three figures."""
    key = SigningKey.generate()
    edge = EdgeVerifier(key.verifier(), 10_000)
    header = f"Bearer {key.mint('u1')[0]}".encode()
    await edge.verify(header)
    cache = ResponseCache(NoRedis(), "p:", 60, 5_000, 64 * 1024 * 1024)  # type: ignore[arg-type]
    reply = Reply(200, [], b"x" * 200)
    await cache.put("k", reply)
    token_hit = await per_call_ns(lambda _: edge.verify(header))
    l1_hit = await per_call_ns(lambda _: cache.get("k"))
    # Past 5,000 entries every put evicts the least recently used one.
    l1_put = await per_call_ns(lambda i: cache.put(f"k{i}", reply))
    print(
        f"token-cache hit {token_hit:.0f} ns, L1 hit {l1_hit:.0f} ns, L1 put+evict {l1_put:.0f} ns"
    )


if __name__ == "__main__":
    asyncio.run(main())
