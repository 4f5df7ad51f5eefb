"""A client-side HTTP cache keyed by URL: If-None-Match on repeat GETs, the body kept locally."""

from dataclasses import dataclass

import httpx


@dataclass(frozen=True)
class Cached:
    """One stored representation."""

    etag: str
    content: bytes
    headers: httpx.Headers


class ETagCacheTransport(httpx.AsyncBaseTransport):
    """Wraps a transport: a 304 answer is turned back into the stored 200, any write clears.

    One client holds one user's tokens, so the URL alone is the key (no cross-user sharing).
    """

    def __init__(self, inner: httpx.AsyncBaseTransport, max_entries: int = 1024) -> None:
        self._inner = inner
        self._max = max_entries
        self._store: dict[str, Cached] = {}
        self.hits = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Revalidate cached GETs; forget everything on a write (it may change any listing)."""
        key = str(request.url)
        if request.method != "GET":
            self._store.clear()
            return await self._inner.handle_async_request(request)
        cached = self._store.get(key)
        if cached is not None:
            request.headers["If-None-Match"] = cached.etag
        response = await self._inner.handle_async_request(request)
        if response.status_code == 304 and cached is not None:
            await response.aclose()
            self.hits += 1
            return httpx.Response(
                200, headers=cached.headers, content=cached.content, request=request
            )
        if response.status_code == 200 and "etag" in response.headers:
            content = await response.aread()
            if len(self._store) >= self._max:
                del self._store[next(iter(self._store))]
            self._store[key] = Cached(response.headers["etag"], content, response.headers)
        return response

    async def aclose(self) -> None:
        """Close the wrapped transport."""
        await self._inner.aclose()
