"""Forwarding to the services over one pooled aiohttp session, with a deadline per upstream."""

from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp

from gateway.reply import Header, Reply, problem

# Per-connection headers (RFC 9110 7.6.1): never forwarded.
_REQUEST_DROP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"content-length",
    }
)
_RESPONSE_DROP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"transfer-encoding",
        b"content-length",
        b"server",
        b"x-powered-by",
        b"date",
        b"x-request-id",
    }
)
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})


@dataclass(frozen=True, slots=True)
class Upstream:
    """One service: its base URL and the deadline of a whole exchange with it."""

    name: str
    base_url: str
    timeout: aiohttp.ClientTimeout


def open_session(pool_size: int) -> aiohttp.ClientSession:
    """The one keep-alive pool every upstream call goes through."""
    connector = aiohttp.TCPConnector(limit=pool_size, keepalive_timeout=30, ttl_dns_cache=300)
    return aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,  # bodies pass through as the service encoded them
        # Nothing the client did not send may appear upstream (a gzip the client never asked for).
        skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
        cookie_jar=aiohttp.DummyCookieJar(),
    )


class Upstreams:
    """Sends a request to a named upstream and maps transport failures to problem replies."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        options: Mapping[str, tuple[str, float]],
        connect_timeout_s: float,
    ) -> None:
        self._session = session
        self._upstreams = {
            name: Upstream(
                name,
                url.rstrip("/"),
                aiohttp.ClientTimeout(total=deadline, sock_connect=connect_timeout_s),
            )
            for name, (url, deadline) in options.items()
        }

    async def forward(
        self, name: str, method: str, target: str, headers: list[Header], body: bytes
    ) -> Reply:
        """The upstream's reply, or 503 (unreachable) / 504 (deadline) / 502 (broken) problems."""
        upstream = self._upstreams[name]
        path = target.split("?", 1)[0]
        for attempt in (1, 2):
            try:
                return await self._exchange(upstream, method, target, headers, body)
            except aiohttp.ServerDisconnectedError:
                # A pooled keep-alive connection the service had closed: safe to retry once.
                if attempt == 2 or method not in _IDEMPOTENT:
                    return problem(502, f"{name} closed the connection", path)
            except TimeoutError:
                return problem(504, f"{name} did not answer in time", path)
            except aiohttp.ClientConnectorError:
                return problem(503, f"{name} is unavailable", path, {"Retry-After": "1"})
            except aiohttp.ClientError:
                return problem(502, f"{name} sent an invalid response", path)
        raise AssertionError("unreachable")

    async def _exchange(
        self, upstream: Upstream, method: str, target: str, headers: list[Header], body: bytes
    ) -> Reply:
        request_headers = [
            (k.decode("latin-1"), v.decode("latin-1")) for k, v in headers if k not in _REQUEST_DROP
        ]
        async with self._session.request(
            method,
            upstream.base_url + target,
            headers=request_headers,
            data=body or None,
            allow_redirects=False,
            timeout=upstream.timeout,
        ) as response:
            payload = await response.read()
            kept = [
                (k.lower(), v) for k, v in response.raw_headers if k.lower() not in _RESPONSE_DROP
            ]
            return Reply(response.status, kept, payload)


async def fetch_json(session: aiohttp.ClientSession, url: str, timeout_s: float) -> object:
    """GET a JSON document (JWKS, OpenAPI) through the pool."""
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
        response.raise_for_status()
        return await response.json(content_type=None)
