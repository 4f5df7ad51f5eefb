"""Spans reach the JSON-lines file whatever their attributes hold; logs never carry secrets."""

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from common.settings import ServiceSettings
from common.telemetry import JsonLinesSpanExporter, setup_logging


def test_span_with_bytes_attribute_is_exported_as_one_json_line(tmp_path: Path) -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(tmp_path / "s.jsonl")))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("parent"), tracer.start_as_current_span("publish") as span:
        span.set_attribute("messaging.kafka.message.key", b"user-1")
    records = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert [r["name"] for r in records] == ["publish", "parent"]
    child, parent = records
    assert child["attributes"]["messaging.kafka.message.key"] == "user-1"
    assert child["trace_id"] == parent["trace_id"]
    assert child["parent_id"] == parent["span_id"]


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


@pytest.mark.usefixtures("restore_logging")
def test_secret_fields_are_redacted_from_json_logs(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging(ServiceSettings(service_name="redact-test", log_format="json"))
    logging.getLogger("stdlib").info("login", extra={"password": "hunter22", "email": "a@b.c"})
    structlog.get_logger("structlog").warning(
        "login failed", email="a@b.c", password="hunter22", access_token="eyJ.secret"
    )
    out = capsys.readouterr().out
    assert "hunter22" not in out
    assert "eyJ.secret" not in out
    stdlib_line, structlog_line = (json.loads(line) for line in out.strip().splitlines()[-2:])
    assert stdlib_line["email"] == "a@b.c"  # extras are logged...
    assert stdlib_line["password"] == "[redacted]"  # ...but never a secret
    assert structlog_line["password"] == "[redacted]"
    assert structlog_line["access_token"] == "[redacted]"
