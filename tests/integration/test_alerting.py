"""The alerting rules on a real gateway's metrics, and Alertmanager's routing and inhibition.

Debian's prometheus and prometheus-alertmanager binaries (deploy/local/install.sh) run here:
Prometheus scrapes an in-process gateway whose upstreams are down and evaluates the SLI rules on
what it really exports; Alertmanager, given a cause and a symptom, holds the symptom back.
"""

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support.gateway import gateway_settings, serve_gateway
from tests.support.infra import ROOT, free_port
from tests.support.tokens import SigningKey
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

OBS = ROOT / "deploy" / "observability"


@contextmanager
def _daemon(args: list[str], log: Path) -> Iterator[None]:
    """Run one of the Debian binaries for the block; stopped (only it) after."""
    binary = shutil.which(args[0])
    assert binary is not None, f"{args[0]} is missing: run deploy/local/install.sh"
    with log.open("wb") as out:
        proc = subprocess.Popen([binary, *args[1:]], stdout=out, stderr=out)
    try:
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def _query(client: httpx.AsyncClient, expr: str) -> dict[str, float]:
    """route_group (or "") -> value of an instant query."""
    answer = (await client.get("/api/v1/query", params={"query": expr})).json()
    return {
        r["metric"].get("route_group", ""): float(r["value"][1]) for r in answer["data"]["result"]
    }


async def test_sli_rules_read_the_gateways_real_metrics(tmp_path: Path) -> None:
    key = SigningKey.generate()
    dead = f"http://127.0.0.1:{free_port()}"  # every upstream down: the gateway answers 5xx
    settings = gateway_settings(f"al{uuid.uuid4().hex[:10]}", key, dead)
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(OBS / "alerts" / "slo.yaml"), str(OBS / "alerts" / "dependencies.yaml")],
        "scrape_configs": [
            {
                "job_name": "taskbus",
                "static_configs": [{"targets": [f"127.0.0.1:{settings.metrics_port}"]}],
            }
        ],
    }
    (tmp_path / "prometheus.yaml").write_text(yaml.safe_dump(config))
    args = [
        "prometheus",
        f"--config.file={tmp_path / 'prometheus.yaml'}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    token, _ = key.mint(uuid.uuid4().hex)
    async with (
        serve_gateway(settings) as url,
        httpx.AsyncClient(base_url=url, timeout=10) as gateway,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as prom,
    ):
        with _daemon(args, tmp_path / "prometheus.log"):
            polls = [0]

            async def ratios() -> tuple[dict[str, float], dict[str, float]] | None:
                # Traffic on two route groups while Prometheus scrapes and evaluates; every 10th
                # poll (about 1/s), so the public per-IP limit (120/min) never answers 429.
                if polls[0] % 10 == 0:
                    await gateway.post("/api/auth/register", json={"email": "a@b.example"})
                    await gateway.get("/api/tasks", headers={"Authorization": f"Bearer {token}"})
                polls[0] += 1
                try:
                    errors = await _query(prom, "route_group:taskbus_gateway_error_ratio:rate5m")
                    slow = await _query(prom, "route_group:taskbus_gateway_slow_ratio:rate5m")
                except httpx.HTTPError:
                    return None  # Prometheus still starting
                # Both recording rules evaluated at least once (not always in the same second).
                both = {"auth", "tasks"} <= errors.keys() and "auth" in slow
                return (errors, slow) if both else None

            errors, slow = await eventually(ratios, within=60, what="the SLIs per group")
            assert errors["auth"] == 1.0
            assert errors["tasks"] == 1.0
            # Fast failures: the le="0.5" bucket holds every answer.
            assert slow["auth"] == 0.0
            assert await _query(prom, 'up{job="taskbus"}') == {"": 1.0}


def _alert(name: str, **labels: str) -> dict[str, Any]:
    return {"labels": {"alertname": name, **labels}, "annotations": {"summary": name}}


async def test_alertmanager_routes_pages_and_inhibits_symptoms_of_a_cause(tmp_path: Path) -> None:
    port = free_port()
    args = [
        "prometheus-alertmanager",
        f"--config.file={OBS / 'alertmanager.yaml'}",
        f"--storage.path={tmp_path}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",  # no gossip port: one instance
    ]
    cause = _alert("TaskbusRedisDown", severity="page", kind="cause", dependency="redis")
    symptom = _alert(
        "TaskbusAvailabilityBudgetBurn", severity="page", kind="symptom", route_group="auth"
    )
    ticket = _alert("TaskbusDeadLetters", severity="ticket", kind="symptom", reason="invalid")
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as am:
        with _daemon(args, tmp_path / "alertmanager.log"):

            async def posted() -> bool:
                try:
                    return (await am.post("/api/v2/alerts", json=[symptom])).status_code == 200
                except httpx.HTTPError:
                    return False

            await eventually(posted, within=30, what="Alertmanager to take alerts")
            down = _alert("TaskbusProcessDown", severity="page", kind="cause", instance="tasks-b")
            assert (await am.post("/api/v2/alerts", json=[down])).status_code == 200

            async def states(count: int = 1) -> dict[str, Any] | None:
                alerts = (await am.get("/api/v2/alerts")).json()
                return (
                    {a["labels"]["alertname"]: a for a in alerts} if len(alerts) >= count else None
                )

            # Alone (beside one process down), the symptom pages.
            alone = await eventually(lambda: states(2), what="the symptom and the process alert")
            assert alone["TaskbusAvailabilityBudgetBurn"]["status"]["state"] == "active"
            assert alone["TaskbusAvailabilityBudgetBurn"]["receivers"] == [{"name": "pager"}]

            assert (await am.post("/api/v2/alerts", json=[cause, ticket])).status_code == 200

            async def inhibited() -> dict[str, Any] | None:
                now = await states()
                burn = (now or {}).get("TaskbusAvailabilityBudgetBurn", {})
                return now if burn.get("status", {}).get("inhibitedBy") else None

            now = await eventually(inhibited, what="the symptom held back by the cause")
            assert now["TaskbusRedisDown"]["status"]["state"] == "active"
            assert now["TaskbusRedisDown"]["receivers"] == [{"name": "pager"}]
            assert now["TaskbusAvailabilityBudgetBurn"]["status"]["state"] == "suppressed"
            # A ticket-level symptom is held back too while the cause pages.
            assert now["TaskbusDeadLetters"]["status"]["state"] == "suppressed"
            assert now["TaskbusDeadLetters"]["receivers"] == [{"name": "tickets"}]

            # The cause resolved, the symptom pages again though the process is still down: one
            # process down inhibits nothing (the inhibitor saw it before the cause, posted later).
            ended = datetime.now(UTC).isoformat()
            resolved = {**cause, "endsAt": ended}
            assert (await am.post("/api/v2/alerts", json=[resolved])).status_code == 200

            async def released() -> dict[str, Any] | None:
                now = await states()
                burn = (now or {}).get("TaskbusAvailabilityBudgetBurn", {})
                return now if burn.get("status", {}).get("state") == "active" else None

            after = await eventually(released, what="the symptom paging again")
            assert after["TaskbusProcessDown"]["status"]["state"] == "active"
            assert "TaskbusRedisDown" not in after
