"""One trace from the HTTP request to the sent email; metrics that parse and move; clean logs."""

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.auth import PASSWORD, unique_email
from tests.support.infra import STATE_DIR
from tests.support.mail import wait_for_mail
from tests.support.processes import MODULES, ServiceProcess
from tests.support.system import running_system
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e


@dataclass
class System:
    client: httpx.AsyncClient
    procs: dict[str, ServiceProcess]
    trace_dir: Path


@pytest.fixture(scope="module")
async def system() -> AsyncIterator[System]:
    prefix = f"obs{uuid.uuid4().hex[:10]}"
    async with (
        running_system(prefix, MODULES) as procs,
        httpx.AsyncClient(base_url=procs["gateway"].url, timeout=30) as client,
    ):
        yield System(client, procs, STATE_DIR / "traces" / prefix)


def _spans(trace_dir: Path) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for path in trace_dir.glob("*.jsonl")
        for line in path.read_text().splitlines()
        if line.strip()
    ]


async def _trace_with(trace_dir: Path, trace_id: str, needed: set[str]) -> list[dict[str, Any]]:
    """Poll the span files until the trace holds spans of every `needed` service."""

    def complete() -> list[dict[str, Any]] | None:
        spans = [s for s in _spans(trace_dir) if s["trace_id"] == trace_id]
        return spans if needed <= {s["service"] for s in spans} else None

    found: list[dict[str, Any]] = await eventually(complete, 30, f"spans of {sorted(needed)}")
    return found


def _server_trace_id(trace_dir: Path, service: str, route_part: str) -> str | None:
    for span in _spans(trace_dir):
        where = f"{span['name']} {span['attributes'].get('url.path', '')}"
        if span["service"] == service and span["kind"] == "SERVER" and route_part in where:
            return str(span["trace_id"])
    return None


async def _metrics(proc: ServiceProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with httpx.AsyncClient() as client:
        text = (await client.get(proc.metrics_url)).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _total(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return sum(
        value
        for (sample, sample_labels), value in samples.items()
        if sample == name and labels.items() <= dict(sample_labels).items()
    )


async def test_one_trace_spans_gateway_auth_kafka_notifier_and_smtp(system: System) -> None:
    email = unique_email()
    registered = await system.client.post(
        "/api/auth/register", json={"email": email, "password": PASSWORD, "name": "Tracy"}
    )
    assert registered.status_code == 201, registered.text
    await wait_for_mail(email)

    trace_id: str = await eventually(
        lambda: _server_trace_id(system.trace_dir, "gateway", "register"), 30, "the register span"
    )
    spans = await _trace_with(system.trace_dir, trace_id, {"gateway", "auth", "notifier"})

    names = {(s["service"], s["name"]) for s in spans}
    assert ("notifier", "smtp send") in names  # the mail's hand-off is in the request's trace
    assert any(s["service"] == "auth" and s["kind"] == "SERVER" for s in spans)
    assert any(s["service"] == "auth" and s["kind"] == "PRODUCER" for s in spans)  # Kafka publish
    assert any(s["service"] == "notifier" and s["kind"] == "CONSUMER" for s in spans)
    by_id = {s["span_id"]: s for s in spans}
    # Every span but the gateway's root hangs off another span of the same trace.
    roots = [s for s in spans if s["parent_id"] not in by_id]
    assert [(r["service"], r["kind"]) for r in roots] == [("gateway", "SERVER")]


async def test_task_creation_is_traced_through_the_outbox_relay(system: System) -> None:
    registered = await system.client.post(
        "/api/auth/register", json={"email": unique_email(), "password": PASSWORD, "name": "T"}
    )
    token = registered.json()["access_token"]
    created = await system.client.post(
        "/api/tasks", json={"title": "traced"}, headers={"Authorization": f"Bearer {token}"}
    )
    assert created.status_code == 201, created.text
    trace_id = (
        format(int(created.headers["traceparent"].split("-")[1], 16), "032x")
        if ("traceparent" in created.headers)
        else None
    )

    def published() -> str | None:
        nonlocal trace_id
        trace_id = trace_id or _server_trace_id(system.trace_dir, "tasks", "/api/tasks")
        spans = _spans(system.trace_dir)
        producer = [s for s in spans if s["trace_id"] == trace_id and s["kind"] == "PRODUCER"]
        return trace_id if any(s["service"] == "tasks" for s in producer) else None

    found: str = await eventually(published, 30, "the relay's publish span")
    spans = await _trace_with(system.trace_dir, found, {"gateway", "tasks"})
    assert {s["service"] for s in spans} >= {"gateway", "tasks"}


async def test_metrics_parse_and_the_named_series_move(system: System) -> None:
    before = {name: await _metrics(proc) for name, proc in system.procs.items()}
    email = unique_email()
    registered = await system.client.post(
        "/api/auth/register", json={"email": email, "password": PASSWORD, "name": "Metric"}
    )
    me = {"Authorization": f"Bearer {registered.json()['access_token']}"}
    created = await system.client.post("/api/tasks", json={"title": "m"}, headers=me)
    path = f"/api/tasks/{created.json()['id']}"
    await system.client.get(path, headers=me)
    await system.client.get(path, headers=me)
    await wait_for_mail(email)
    after = {name: await _metrics(proc) for name, proc in system.procs.items()}

    def moved(process: str, name: str, **labels: str) -> bool:
        return _total(after[process], name, **labels) > _total(before[process], name, **labels)

    for service in ("gateway", "auth", "tasks"):
        assert moved(service, "taskbus_http_requests_total", service=service), service
    assert moved("gateway", "taskbus_gateway_cache_total")
    assert moved("gateway", "taskbus_gateway_ratelimit_decisions_total")
    assert moved("auth", "taskbus_published_messages_total")
    assert moved("tasks", "taskbus_tasks_outbox_published_total")

    async def mail_counted() -> bool:  # the mail is in the sink before the notifier counts it
        after["notifier"] = await _metrics(system.procs["notifier"])
        return moved("notifier", "taskbus_notifier_emails_total", outcome="sent")

    await eventually(mail_counted, 30, "the notifier to count the mail")
    assert ("taskbus_outbox_backlog", (("service", "tasks"),)) in after["tasks"]


async def test_failed_login_logs_neither_password_nor_token(system: System) -> None:
    email = unique_email()
    registered = await system.client.post(
        "/api/auth/register", json={"email": email, "password": PASSWORD, "name": "Logan"}
    )
    tokens = registered.json()
    wrong = f"wrong-{uuid.uuid4().hex}"
    request_id = f"req-{uuid.uuid4().hex}"
    failed = await system.client.post(
        "/api/auth/login",
        json={"email": email, "password": wrong},
        headers={"X-Request-ID": request_id},
    )
    assert failed.status_code == 401
    # A request with a (valid) bearer token, so a careless log line would have it to leak.
    await system.client.get(
        "/api/auth/me", headers={"Authorization": f"Bearer {tokens['access_token']}"}
    )
    logs = "\n".join(proc.log_path.read_text(errors="replace") for proc in system.procs.values())
    failures = [
        json.loads(line)
        for line in system.procs["auth"].log_path.read_text().splitlines()
        if '"login failed"' in line
    ]
    assert failures, "the failed login left no audit line"
    assert failures[-1]["level"] == "warning"
    assert "trace_id" in failures[-1]  # correlatable with the request's trace...
    assert failures[-1]["request_id"] == request_id  # ...and with the id the client sent
    for secret in (wrong, PASSWORD, tokens["access_token"], tokens["refresh_token"]):
        assert secret not in logs
