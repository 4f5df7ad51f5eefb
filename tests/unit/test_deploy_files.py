"""compose.yaml and the Kubernetes manifests are valid, and run the processes that exist."""

import importlib.util
import json
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from gateway.settings import GatewaySettings
from services.auth.keys import generate_key
from services.auth.settings import AuthSettings
from services.notifier.settings import NotifierSettings
from services.tasks.settings import TasksSettings
from tests.support.auth import signing_keys_env
from tools.check_deps import undeclared

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_SCHEMA = (
    ROOT / "var" / "schemas" / "compose-spec.json"
)  # fetched by deploy/local/install.sh
K8S_VERSION = "1.33"
KAFKA_CLIENTS = ("AUTH", "TASKS", "NOTIFIER", "GATEWAY")  # each service's env prefix
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


def test_compose_talks_to_kafka_over_sasl_ssl_one_principal_per_service() -> None:
    services = _compose()["services"]
    broker = services["kafka"]["environment"]
    assert broker["KAFKA_LISTENERS"] == "SASL_SSL://:9092,CONTROLLER://:9093"
    assert "PLAINTEXT:PLAINTEXT" not in broker["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"]
    assert broker["KAFKA_AUTHORIZER_CLASS_NAME"].endswith("StandardAuthorizer")
    assert broker["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"] == "false"
    assert services["kafka-setup"]["command"] == ["python", "-m", "common.kafka_setup"]
    assert importlib.util.find_spec("common.kafka_setup") is not None
    for name in SERVICES:
        env = services[name]["environment"]
        assert env["TASKBUS_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
        assert env[f"{name.upper()}_KAFKA_USERNAME"] == f"svc-{name}"
        setup = services[name]["depends_on"]["kafka-setup"]
        assert setup == {"condition": "service_completed_successfully"}


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


def _k8s_env(*, with_secrets: bool) -> dict[str, str]:
    docs = dict(
        _k8s_documents()
        + [
            ("secret", d)
            for d in yaml.safe_load_all(
                (ROOT / "deploy" / "k8s" / "secret.example.yaml").read_text()
            )
        ]
    )
    env = {k: str(v) for k, v in docs["config.yaml"]["data"].items()}
    if with_secrets:
        # The example's placeholders, filled the way an operator would.
        filled = {
            "AUTH_SIGNING_KEYS": signing_keys_env(generate_key("k8s")),
            "TASKS_CURSOR_SECRET": "c" * 40,
            "TASKBUS_RESET_SEAL_KEY": "r" * 40,
            **{f"{s}_KAFKA_PASSWORD": f"{s.lower()}-kafka-password" for s in KAFKA_CLIENTS},
        }
        env |= {k: filled.get(k, "secret-value") for k in docs["secret"]["stringData"]}
    return env


def _load_all_settings() -> None:
    AuthSettings()
    TasksSettings()
    NotifierSettings()
    GatewaySettings()


def test_kubernetes_kafka_setup_job_applies_the_acl_table_as_the_super_user() -> None:
    [job] = [doc for _, doc in _k8s_documents() if doc["kind"] == "Job"]
    [container] = job["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["python", "-m", "common.kafka_setup"]
    sources = [ref.get("secretRef", {}).get("name") for ref in container["envFrom"]]
    assert sources[-1] == "taskbus-kafka-admin"  # read by this Job only, and it wins
    deployments = [doc for _, doc in _k8s_documents() if doc["kind"] == "Deployment"]
    for deployment in deployments:
        for c in deployment["spec"]["template"]["spec"]["containers"]:
            assert "taskbus-kafka-admin" not in str(c.get("envFrom"))


def test_kubernetes_production_config_satisfies_every_service(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key, value in _k8s_env(with_secrets=True).items():
        monkeypatch.setenv(key, value)
    _load_all_settings()
    assert TasksSettings().is_production
    # Every service talks to Kafka over SASL_SSL as its own principal.
    for settings in (AuthSettings(), TasksSettings(), NotifierSettings(), GatewaySettings()):
        assert settings.kafka_security_protocol == "SASL_SSL"
        assert settings.kafka_username == f"svc-{settings.service_name}"


def test_kubernetes_config_without_secrets_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in _k8s_env(with_secrets=False).items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValueError, match="TASKBUS_KAFKA_PASSWORD are required"):
        GatewaySettings()
    for service in KAFKA_CLIENTS:
        monkeypatch.setenv(f"{service}_KAFKA_PASSWORD", "taskbus-dev-generated-locally")
    with pytest.raises(ValueError, match="generated development"):
        GatewaySettings()
    for service in KAFKA_CLIENTS:
        monkeypatch.setenv(f"{service}_KAFKA_PASSWORD", "a-long-enough-kafka-password")
    with pytest.raises(ValueError, match="AUTH_SIGNING_KEYS"):
        AuthSettings()
    with pytest.raises(ValueError, match="TASKS_CURSOR_SECRET"):
        TasksSettings()


def test_every_imported_third_party_module_is_a_declared_dependency() -> None:
    assert undeclared() == []
