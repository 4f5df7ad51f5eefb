"""Tracing and logging set-up shared by every process (called from each composition root)."""

import contextvars
import json
import logging
import os
import re
import sys
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sentry_sdk
import structlog
from opentelemetry import trace
from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.instrumentation.pymongo import PymongoInstrumentor
from opentelemetry.instrumentation.redis import RedisInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from starlette.types import ASGIApp, Receive, Scope, Send

from common.metrics import MetricsMiddleware
from common.settings import ServiceSettings

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "request_id", default=None
)

# Keys whose values never reach a log line, whatever the caller passes.
_SECRET_KEYS = frozenset(
    {
        "password",
        "new_password",
        "current_password",
        "token",
        "access_token",
        "refresh_token",
        "authorization",
        "cookie",
        "set-cookie",
        "secret",
        "reset_token",
        "smtp_password",
    }
)


class JsonLinesSpanExporter(SpanExporter):
    """Writes finished spans as JSON lines: the local stand-in for an OTLP collector."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Append one line per span."""
        lines = [json.dumps(span_record(span), default=_json_default) + "\n" for span in spans]
        with self._lock, self._path.open("a", encoding="utf-8") as out:
            out.writelines(lines)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        """Nothing to release: each export opens and closes the file."""


def _json_default(value: object) -> str:
    # Attribute values may be bytes (a Kafka message key); a span must never fail to export.
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return repr(value)


def span_record(span: ReadableSpan) -> dict[str, Any]:
    """The fields of a span that tests and humans read, with ids as lowercase hex."""
    ctx = span.get_span_context()
    parent = span.parent
    return {
        "name": span.name,
        "service": span.resource.attributes.get("service.name"),
        "trace_id": format(ctx.trace_id, "032x") if ctx else None,
        "span_id": format(ctx.span_id, "016x") if ctx else None,
        "parent_id": format(parent.span_id, "016x") if parent else None,
        "kind": span.kind.name,
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "status": span.status.status_code.name,
        "attributes": dict(span.attributes or {}),
    }


def setup_tracing(settings: ServiceSettings) -> TracerProvider:
    """Install a tracer provider: OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set, else JSON lines."""
    provider = TracerProvider(
        resource=Resource.create({"service.name": settings.service_name}),
        sampler=ParentBased(TraceIdRatioBased(settings.trace_sample_ratio)),
    )
    exporter: SpanExporter
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
            OTLPSpanExporter,
        )

        exporter = OTLPSpanExporter()
    else:
        path = Path(settings.trace_dir) / f"{settings.service_name}-{os.getpid()}.jsonl"
        exporter = JsonLinesSpanExporter(path)
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=500))
    trace.set_tracer_provider(provider)
    return provider


def setup_error_tracking(settings: ServiceSettings) -> bool:
    """Report unhandled errors to Sentry, only when a DSN is configured; True if enabled."""
    dsn = settings.sentry_dsn.get_secret_value() if settings.sentry_dsn else None
    dsn = dsn or os.environ.get("SENTRY_DSN")
    if not dsn:
        return False
    sentry_sdk.init(
        dsn=dsn,
        environment=settings.environment,
        release=f"taskbus-{settings.service_name}",
        send_default_pii=False,  # no emails, IPs or cookies leave the process
        traces_sample_rate=0.0,  # traces go through OpenTelemetry
    )
    return True


def current_traceparent() -> str | None:
    """The W3C traceparent of the current span, to store with an outbox event."""
    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return carrier.get("traceparent")


_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._-]{1,128}$")


class RequestIdMiddleware:
    """Binds the request's X-Request-ID to every log line written while it is handled.

    A missing or malformed id is replaced (in the scope, so the gateway forwards the same one)
    by a fresh one; the gateway passes its id upstream, so one id spans every service's logs.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Bind the id for the duration of the request."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = [(k, v) for k, v in scope["headers"] if k != b"x-request-id"]
        given = next((v for k, v in scope["headers"] if k == b"x-request-id"), b"")
        request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex.encode()
        # In place, like Starlette's router: outer middleware read values set further in.
        scope["headers"] = [*headers, (b"x-request-id", request_id)]
        token = request_id_var.set(request_id.decode())
        try:
            await self.app(scope, receive, send)
        finally:
            request_id_var.reset(token)


def instrument(app: ASGIApp, settings: ServiceSettings) -> ASGIApp:
    """Wrap an app with server spans and RED metrics, and trace its Mongo/Redis/HTTP clients."""
    PymongoInstrumentor().instrument()
    RedisInstrumentor().instrument()
    AioHttpClientInstrumentor().instrument()
    return OpenTelemetryMiddleware(
        RequestIdMiddleware(MetricsMiddleware(app, settings.service_name)),
        excluded_urls="livez,readyz,metrics",
        # Per-message receive/send child spans say nothing the server span does not, and cost
        # the gateway ~1.7x throughput (docs/bench-gateway.md).
        exclude_spans=["receive", "send"],
    )


def _add_trace_context(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        event["trace_id"] = format(ctx.trace_id, "032x")
        event["span_id"] = format(ctx.span_id, "016x")
    request_id = request_id_var.get()
    if request_id:
        event["request_id"] = request_id
    return event


def _redact(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    for key in event.keys() & _SECRET_KEYS:
        event[key] = "[redacted]"
    return event


def setup_logging(settings: ServiceSettings) -> None:
    """Route structlog and stdlib logging (uvicorn, aiokafka, faststream) through one renderer."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_trace_context,
        _redact,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=json.dumps)
        if settings.log_format == "json"
        else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    structlog.contextvars.bind_contextvars(service=settings.service_name)
