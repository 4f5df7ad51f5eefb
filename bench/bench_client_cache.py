"""The client's cache: mean µs per revalidated GET served from cache (stub gateway answering 304).

Run: `uv run --frozen --no-sync python -m bench.bench_client_cache`. The stub is an
httpx.MockTransport, so the figure is the client's own cost per request, not the network's.
"""

import asyncio
import time

import httpx

from client import TaskbusClient, TokenPair

N = 2000
BODY = {"id": "t1", "title": "x" * 200, "tags": ["a", "b"], "version": 3}


def _handle(request: httpx.Request) -> httpx.Response:
    headers = {"etag": '"v1"', "cache-control": "private, no-cache"}
    if request.headers.get("if-none-match") == '"v1"':
        return httpx.Response(304, headers=headers)
    return httpx.Response(200, json=BODY, headers=headers)


async def _mean_us(n: int) -> float:
    transport = httpx.MockTransport(_handle)
    async with TaskbusClient(
        "http://gw.test", tokens=TokenPair("a", "r"), transport=transport
    ) as c:
        await c.get_task("t1")
        started = time.perf_counter()
        for _ in range(n):
            assert await c.get_task("t1") == BODY
        elapsed = time.perf_counter() - started
        assert c.cache.hits == n
    return 1e6 * elapsed / n


def main() -> None:
    """Print the best of five runs' mean µs per cached, revalidated GET."""
    best = min(asyncio.run(_mean_us(N)) for _ in range(5))
    print(f"revalidated GET from cache: {best:.0f} µs mean over {N} requests (best of 5)")


if __name__ == "__main__":
    main()
