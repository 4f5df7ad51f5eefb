"""Tracing and logging set-up shared by every process (called from each composition root)."""

import json
import logging
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sentry_sdk
import structlog
from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor
from opentelemetry.instrumentation.pymongo import PymongoInstrumentor
from opentelemetry.instrumentation.redis import RedisInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from starlette.types import ASGIApp

from common.asgi import RequestIdMiddleware, ServerSpanMiddleware, request_id_var
from common.metrics import MetricsMiddleware
from common.settings import ServiceSettings

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


def instrument(app: ASGIApp, settings: ServiceSettings, serve_metrics: bool = True) -> ASGIApp:
    """Wrap an app with server spans and RED metrics, and trace its Mongo/Redis/HTTP clients."""
    app_root = app
    PymongoInstrumentor().instrument()
    RedisInstrumentor().instrument()
    AioHttpClientInstrumentor().instrument()
    app = RequestIdMiddleware(MetricsMiddleware(app, settings.service_name, serve_metrics))
    # FastAPI makes its own SERVER spans (native telemetry, on once a tracer provider is set);
    # a second one here would double every request. The gateway is plain Starlette.
    return app if isinstance(app_root, FastAPI) else ServerSpanMiddleware(app)


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
