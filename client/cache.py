"""The client's HTTP cache: hishel's RFC 9111 private cache over a per-client in-memory SQLite."""

import sqlite3

import anysqlite
import httpx
from hishel import AsyncSqliteStorage, CacheOptions
from hishel.httpx import AsyncCacheTransport

MAX_BYTES = 64 * 1024**2  # per client; past it hishel evicts the least recently used entries


def _memory_storage() -> AsyncSqliteStorage:
    # One connection per client: another user's client never sees these bodies, nothing
    # touches disk. anysqlite runs each call on a worker thread, hence check_same_thread.
    real = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
    return AsyncSqliteStorage(connection=anysqlite.Connection(real), max_size=MAX_BYTES)


class ETagCacheTransport(httpx.AsyncBaseTransport):
    """A private RFC 9111 cache (If-None-Match, a 304 served as the stored 200) that counts hits.

    The gateway marks task reads `private, no-cache`, so every reuse is revalidated and a
    write never leaves a stale body behind; unsafe methods also invalidate their URL.
    """

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self._cache = AsyncCacheTransport(
            inner, storage=_memory_storage(), rfc=CacheOptions(shared=False)
        )
        self.hits = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Answer through the cache, counting the answers it served from its store."""
        response = await self._cache.handle_async_request(request)
        if response.extensions["caching"]["from_cache"]:
            self.hits += 1
        return response

    async def aclose(self) -> None:
        """Close the wrapped transport and the store."""
        await self._cache.aclose()
