"""Forwarding to the services over one pooled aiohttp session, with a deadline per upstream."""

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

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
# A reused keep-alive connection the service had closed (or reset) under the request.
_CLOSED_UNDER_US = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)


def origin_of(url: str) -> str:
    """scheme://host[:port] of an absolute URL, lower-cased ("" for a relative one)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower() if parts.scheme and parts.netloc else ""


def relative_location(value: str, origins: frozenset[str]) -> str:
    """A Location pointing at an upstream, as a path on the gateway; any other left as it is."""
    if origin_of(value) not in origins:
        return value
    parts = urlsplit(value)
    path = parts.path or "/"
    query = f"?{parts.query}" if parts.query else ""
    fragment = f"#{parts.fragment}" if parts.fragment else ""
    return f"{path}{query}{fragment}"


def retryable(method: str, headers: list[Header]) -> bool:
    """Safe to send again: idempotent by method, or made so by an Idempotency-Key."""
    return method in _IDEMPOTENT or any(k == b"idempotency-key" for k, _ in headers)


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
        # The services' own addresses must never reach a client (a redirect's Location).
        self._origins = frozenset(origin_of(u.base_url) for u in self._upstreams.values())

    async def forward(
        self, name: str, method: str, target: str, headers: list[Header], body: bytes
    ) -> Reply:
        """The upstream's reply, or 503 (unreachable) / 504 (deadline) / 502 (broken) problems."""
        upstream = self._upstreams[name]
        path = target.split("?", 1)[0]
        for attempt in (1, 2):
            try:
                return await self._exchange(upstream, method, target, headers, body)
            except TimeoutError:
                return problem(504, f"{name} did not answer in time", path)
            except aiohttp.ClientConnectorError:
                # Never connected, so the request never reached it.
                return problem(503, f"{name} is unavailable", path, {"Retry-After": "1"})
            except _CLOSED_UNDER_US:
                # Closed before any response byte: a fresh connection gets one more try, if
                # sending the request twice cannot do its work twice (aiohttp cannot tell
                # whether the service read it).
                if attempt == 2 or not retryable(method, headers):
                    return problem(502, f"{name} closed the connection", path)
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
            return Reply(response.status, [self._public(k, v) for k, v in kept], payload)

    def _public(self, name: bytes, value: bytes) -> Header:
        """A response header as the client may see it (Location without a service's origin)."""
        if name != b"location":
            return name, value
        return name, relative_location(value.decode("latin-1"), self._origins).encode("latin-1")


async def fetch_json(session: aiohttp.ClientSession, url: str, timeout_s: float) -> object:
    """GET a JSON document (JWKS, OpenAPI) through the pool."""
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
        response.raise_for_status()
        return await response.json(content_type=None)
