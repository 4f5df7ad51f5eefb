"""compose.yaml and the Kubernetes manifests are valid, and run the processes that exist."""

import importlib.util
import json
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_SCHEMA = (
    ROOT / "var" / "schemas" / "compose-spec.json"
)  # fetched by deploy/local/install.sh
K8S_VERSION = "1.33"
SERVICES = {
    "gateway": "gateway",
    "auth": "services.auth",
    "tasks": "services.tasks",
    "notifier": "services.notifier",
}


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return data


def _k8s_documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted((ROOT / "deploy" / "k8s").glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def test_compose_file_matches_the_compose_specification() -> None:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    jsonschema.validate(_compose(), schema)


def test_compose_runs_each_service_module_with_replicas() -> None:
    services = _compose()["services"]
    for name, module in SERVICES.items():
        assert services[name]["command"] == ["python", "-m", module]
        assert importlib.util.find_spec(module) is not None
        assert services[name]["deploy"]["replicas"] >= 2
    assert {"kafka", "mongo", "redis", "mail", "lb"} <= services.keys()


@pytest.mark.parametrize(
    ("name", "doc"), _k8s_documents(), ids=lambda v: v if isinstance(v, str) else v["kind"]
)
def test_kubernetes_manifest_is_valid(name: str, doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_kubernetes_deployments_probe_and_run_existing_modules() -> None:
    deployments = [doc for _, doc in _k8s_documents() if doc["kind"] == "Deployment"]
    assert {d["metadata"]["name"] for d in deployments} == set(SERVICES)
    for deployment in deployments:
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        assert container["command"] == ["python", "-m", SERVICES[deployment["metadata"]["name"]]]
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
