"""ASGI middleware every Taskbus process runs under: server spans and request ids.

The server span is made here rather than by opentelemetry-instrumentation-asgi: that middleware
reads every header for a dozen attributes and records its own metrics on every request, which
cost the gateway more than half its throughput (docs/bench-gateway.md); this one extracts the
W3C context, starts one span and records what the RED metrics do not already say.
"""

import contextvars
import re
import uuid

from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, StatusCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "request_id", default=None
)
_TRACE_HEADERS = frozenset({b"traceparent", b"tracestate"})
# Probes and scrapes run every few seconds; a span each would bury the real traces.
_UNTRACED = frozenset({"/livez", "/readyz", "/metrics"})
_tracer = trace.get_tracer("taskbus.http")


class StatusRecorder:
    """Wraps an ASGI `send` and remembers the response status (500 until one is sent)."""

    def __init__(self, send: Send) -> None:
        self.status = 500
        self._send = send

    async def __call__(self, message: Message) -> None:
        """Pass the message on, noting the status of the response start."""
        if message["type"] == "http.response.start":
            self.status = message["status"]
        await self._send(message)


class ServerSpanMiddleware:
    """One SERVER span per HTTP request, continuing the caller's W3C trace context."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the request inside its span; name it by route template once routing is done."""
        if scope["type"] != "http" or scope["path"] in _UNTRACED:
            await self.app(scope, receive, send)
            return
        carrier = {
            k.decode("latin-1"): v.decode("latin-1")
            for k, v in scope["headers"]
            if k in _TRACE_HEADERS
        }
        method = scope["method"]
        with _tracer.start_as_current_span(
            f"{method} {scope['path']}",
            context=propagate.extract(carrier),
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": scope["path"]},
        ) as span:
            recorder = StatusRecorder(send)
            try:
                await self.app(scope, receive, recorder)
            finally:
                status = recorder.status
                if span.is_recording():
                    route = getattr(scope.get("route"), "path", None)
                    if route:
                        span.update_name(f"{method} {route}")
                        span.set_attribute("http.route", route)
                    span.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        span.set_status(StatusCode.ERROR)


_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._-]{1,128}$")


class RequestIdMiddleware:
    """Binds the request's X-Request-ID to every log line written while it is handled.

    A missing or malformed id is replaced (in the scope, so the gateway forwards the same one)
    by a fresh one; the gateway passes its id upstream, so one id spans every service's logs.
    In the same pass over the headers, a request with several Authorization headers loses them
    all (every process runs this, so no two doors read different tokens of one request).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Bind the id for the duration of the request."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = [(k, v) for k, v in scope["headers"] if k != b"x-request-id"]
        if sum(k == b"authorization" for k, _ in headers) > 1:
            # Ambiguous credentials count as none: the gateway and a service must never judge
            # different tokens of one request (each framework picks its own one of several).
            headers = [(k, v) for k, v in headers if k != b"authorization"]
        given = next((v for k, v in scope["headers"] if k == b"x-request-id"), b"")
        request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex.encode()
        # In place, like Starlette's router: outer middleware read values set further in.
        scope["headers"] = [*headers, (b"x-request-id", request_id)]
        token = request_id_var.set(request_id.decode())
        try:
            await self.app(scope, receive, send)
        finally:
            request_id_var.reset(token)
