"""The collector config and the Grafana dashboard hang together (checked offline)."""

import json
import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
OBS = ROOT / "deploy" / "observability"


def test_collector_pipelines_use_only_defined_components() -> None:
    config: dict[str, Any] = yaml.safe_load((OBS / "otel-collector.yaml").read_text())
    pipelines = config["service"]["pipelines"]
    assert {"traces", "metrics"} <= pipelines.keys()
    for pipeline in pipelines.values():
        for kind in ("receivers", "processors", "exporters"):
            for name in pipeline.get(kind, []):
                assert name in config[kind], f"{name} is used but not defined under {kind}"


def test_every_dashboard_query_names_a_metric_the_code_exports() -> None:
    dashboard = json.loads((OBS / "grafana" / "dashboards" / "taskbus.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {
        re.sub(r"_(bucket|sum|count)$", "", m) for e in exprs for m in re.findall(r"taskbus_\w+", e)
    }
    source = "\n".join(
        p.read_text() for d in ("common", "services", "gateway") for p in (ROOT / d).rglob("*.py")
    )
    # FastStream's Prometheus middleware (common/kafka.py, prefix "taskbus") names these itself.
    faststream = {"taskbus_published_messages_total", "taskbus_received_messages_total"}
    defined = {m for m in used if re.search(rf'"{m.removesuffix("_total")}(_total)?"', source)}
    assert used - defined - faststream == set()
