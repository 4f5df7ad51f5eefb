"""Edge headers: helmet v8's default security set and CORS, on every response the gateway sends."""

from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common.problems import problem_response

# helmet 8.x defaults (contentSecurityPolicy.getDefaultDirectives() and the other middlewares).
DEFAULT_CSP = (
    "default-src 'self';base-uri 'self';font-src 'self' https: data:;form-action 'self';"
    "frame-ancestors 'self';img-src 'self' data:;object-src 'none';script-src 'self';"
    "script-src-attr 'none';style-src 'self' https: 'unsafe-inline';upgrade-insecure-requests"
)
# Swagger UI loads its bundle from a CDN; only /docs gets this wider policy.
DOCS_CSP = (
    "default-src 'self';base-uri 'self';font-src 'self' https: data:;form-action 'self';"
    "frame-ancestors 'self';img-src 'self' data: https:;object-src 'none';"
    "script-src 'self' https://cdn.jsdelivr.net 'unsafe-inline';script-src-attr 'none';"
    "style-src 'self' https: 'unsafe-inline';upgrade-insecure-requests"
)
HELMET_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"origin-agent-cluster", b"?1"),
    (b"referrer-policy", b"no-referrer"),
    (b"strict-transport-security", b"max-age=31536000; includeSubDomains"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-dns-prefetch-control", b"off"),
    (b"x-download-options", b"noopen"),
    (b"x-frame-options", b"SAMEORIGIN"),
    (b"x-permitted-cross-domain-policies", b"none"),
    (b"x-xss-protection", b"0"),
)
CORS_METHODS = b"GET, POST, PUT, PATCH, DELETE"
CORS_REQUEST_HEADERS = b"Authorization, Content-Type, If-None-Match, If-Match, X-Request-ID"
CORS_EXPOSED = b"ETag, Location, RateLimit, RateLimit-Policy, Retry-After, X-Cache, X-Request-ID"
# Whatever an upstream says about these, the gateway's value is the one that leaves.
_REPLACED = frozenset(
    {name for name, _ in HELMET_HEADERS}
    | {
        b"content-security-policy",
        b"server",
        b"x-powered-by",
        b"access-control-allow-origin",
        b"access-control-allow-credentials",
        b"access-control-expose-headers",
    }
)


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of a request header (name in lower case)."""
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def header_bytes(scope: Scope) -> int:
    """The request's header section size as sent: name, ": ", value and CRLF per field."""
    return sum(len(key) + len(value) + 4 for key, value in scope["headers"])


_DEFAULT_SET = ((b"content-security-policy", DEFAULT_CSP.encode()), *HELMET_HEADERS)
_DOCS_SET = ((b"content-security-policy", DOCS_CSP.encode()), *HELMET_HEADERS)


def security_headers(path: str) -> list[tuple[bytes, bytes]]:
    """helmet's set for a response to `path`."""
    return list(_DOCS_SET if path == "/docs" else _DEFAULT_SET)


class EdgeHeaders:
    """Outermost middleware: security and CORS headers on every response, errors included.

    It also turns an unhandled exception into a 500 problem document, so even a crash leaves
    with the full header set.
    """

    def __init__(
        self,
        app: ASGIApp,
        cors_origins: Iterable[str],
        cors_max_age_s: int,
        cors_credentials: bool = True,
    ) -> None:
        self._app = app
        self._origins = frozenset(origin.encode() for origin in cors_origins)
        self._max_age = str(cors_max_age_s).encode()
        self._credentials = [(b"access-control-allow-credentials", b"true")] * cors_credentials

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Wrap `send` so the response start carries the edge headers."""
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        origin = header(scope, b"origin")
        allowed = origin if origin in self._origins else None
        extra = security_headers(scope["path"])
        if self._origins:
            extra.append((b"vary", b"Origin"))
        if allowed:
            extra += [
                (b"access-control-allow-origin", allowed),
                (b"access-control-expose-headers", CORS_EXPOSED),
                *self._credentials,
            ]
        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in _REPLACED]
                message = {**message, "headers": kept + extra}
            await send(message)

        if (
            origin
            and scope["method"] == "OPTIONS"
            and header(scope, b"access-control-request-method")
        ):
            await self._preflight(allowed, scope, receive, send_with_headers)
            return
        try:
            await self._app(scope, receive, send_with_headers)
        except Exception:
            if started:
                raise
            response = problem_response(500, "unexpected error", instance=scope["path"])
            await response(scope, receive, send_with_headers)
            raise

    async def _preflight(
        self, allowed: bytes | None, scope: Scope, receive: Receive, send: Send
    ) -> None:
        if allowed is None:
            response = problem_response(403, "origin not allowed", instance=scope["path"])
            await response(scope, receive, send)
            return
        headers = [
            (b"access-control-allow-methods", CORS_METHODS),
            (b"access-control-allow-headers", CORS_REQUEST_HEADERS),
            (b"access-control-max-age", self._max_age),
            (b"content-length", b"0"),
        ]
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
