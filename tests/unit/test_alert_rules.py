"""The alerting rules and Alertmanager routing are valid and behave as their unit tests say.

promtool and amtool come from Debian's prometheus and prometheus-alertmanager packages, which
deploy/local/install.sh installs; a missing tool fails the test rather than skipping it.
"""

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
OBS = ROOT / "deploy" / "observability"
ALERTS = OBS / "alerts"
RULE_FILES = sorted(ALERTS.glob("*.yaml"))
RULE_TESTS = sorted((ALERTS / "tests").glob("*.yaml"))
DOCS = ROOT / "docs" / "architecture.md"


def _run(tool: str, *args: str) -> str:
    path = shutil.which(tool)
    assert path is not None, f"{tool} is missing: run deploy/local/install.sh (make install)"
    done = subprocess.run([path, *args], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"{tool} {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _rules() -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            rules += group["rules"]
    return rules


def _alerts() -> list[dict[str, Any]]:
    return [rule for rule in _rules() if "alert" in rule]


def test_prometheus_config_and_its_rule_files_are_valid() -> None:
    out = _run("promtool", "check", "config", str(OBS / "prometheus.yaml"))
    # check config also checks every rule file the config names: all of alerts/*.yaml.
    assert f"{len(RULE_FILES)} rule files found" in out


def test_rule_files_pass_promtool_check_rules() -> None:
    _run("promtool", "check", "rules", *map(str, RULE_FILES))


@pytest.mark.parametrize("test_file", RULE_TESTS, ids=lambda p: p.name)
def test_rule_unit_tests_pass(test_file: Path) -> None:
    out = _run("promtool", "test", "rules", str(test_file))
    assert "SUCCESS" in out


def test_every_alert_is_unit_tested_firing() -> None:
    fired = {
        case["alertname"]
        for path in RULE_TESTS
        for test in yaml.safe_load(path.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert {alert["alert"] for alert in _alerts()} - fired == set()


def test_every_alert_has_a_severity_a_kind_and_a_runbook_line() -> None:
    docs = DOCS.read_text()
    for alert in _alerts():
        labels = alert["labels"]
        assert labels["severity"] in {"page", "ticket"}, alert["alert"]
        assert labels["kind"] in {"cause", "symptom"}, alert["alert"]
        assert f"`{alert['alert']}`" in docs, f"{alert['alert']} has no line in {DOCS.name}"


def test_rules_read_only_metrics_the_code_exports() -> None:
    exprs = " ".join(rule["expr"] for rule in _rules())
    # Recorded series (route_group:taskbus_...:rate5m) are the rules' own: a ':' precedes them.
    names = re.findall(r"(?<![\w:])taskbus_\w+", exprs)
    used = {re.sub(r"_(bucket|sum|count)$", "", m) for m in names}
    assert {"taskbus_http_requests_total", "taskbus_outbox_backlog"} <= used
    source = "\n".join(
        p.read_text() for d in ("common", "services", "gateway") for p in (ROOT / d).rglob("*.py")
    )
    # prometheus_client adds _total to a Counter's name; the source may spell it either way.
    defined = {m for m in used if re.search(rf'"{m.removesuffix("_total")}(_total)?"', source)}
    assert used - defined == set()


def test_alertmanager_config_is_valid() -> None:
    _run("amtool", "check-config", str(OBS / "alertmanager.yaml"))


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["severity=page", "kind=cause"], "pager"),
        (["severity=ticket", "kind=symptom"], "tickets"),
        (["alertname=Unrouted"], "null"),
    ],
)
def test_alertmanager_routes_by_severity(labels: list[str], receiver: str) -> None:
    config = f"--config.file={OBS / 'alertmanager.yaml'}"
    out = _run("amtool", "config", "routes", "test", config, *labels)
    assert out.strip() == receiver


def test_inhibition_holds_symptoms_while_a_cause_pages() -> None:
    config = yaml.safe_load((OBS / "alertmanager.yaml").read_text())
    causes = [r for r in config["inhibit_rules"] if 'kind="cause"' in r["source_matchers"]]
    assert len(causes) == 1
    assert causes[0]["target_matchers"] == ['kind="symptom"']
    # The sources are exactly the paging shared-dependency alerts (not one process down).
    matcher = next(m for m in causes[0]["source_matchers"] if m.startswith("dependency=~"))
    named = set(matcher.removeprefix('dependency=~"').removesuffix('"').split("|"))
    paging = {
        a["labels"]["dependency"]
        for a in _alerts()
        if a["labels"]["kind"] == "cause" and a["labels"]["severity"] == "page"
    }
    assert named == paging - {"taskbus", "{{ $labels.instance }}"}
    assert any(a["labels"]["kind"] == "symptom" for a in _alerts())


def _keys(node: object) -> set[str]:
    if isinstance(node, dict):
        return set(node) | {k for value in node.values() for k in _keys(value)}
    if isinstance(node, list):
        return {k for value in node for k in _keys(value)}
    return set()


def test_alertmanager_reads_every_secret_from_a_file() -> None:
    keys = _keys(yaml.safe_load((OBS / "alertmanager.yaml").read_text()))
    inline = {"smtp_auth_password", "auth_password", "credentials", "url_secret", "api_key"}
    assert keys & inline == set()
    assert {"smtp_auth_password_file", "credentials_file"} <= keys
