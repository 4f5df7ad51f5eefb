"""The OpenAPI contract tells the truth: schemathesis, every check on, against the running gateway,
and a client generated from it works.

The whole stack runs (auth, tasks, notifier, gateway on the shared infra); schemathesis loads the
gateway's combined /openapi.json and runs its examples, coverage, fuzzing and stateful phases
(create a task, then get, patch and delete it along the document's links) with a new user's
token. Rate limits (the gateway's, auth's per-address login and reset budgets) are raised for
this stack only: the contract says that 429 can come (it is declared on every operation), but a
run spent on 429s would test nothing behind them.
"""

import importlib
import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis

from tests.support.auth import PASSWORD
from tests.support.contract import (
    contract_config,
    fresh_idempotency_keys,
    fresh_user_auth,
    run,
)
from tests.support.system import running_system

pytestmark = pytest.mark.e2e

_HIGH = 100_000
STACK_ENV = {
    "GATEWAY_RATE_LIMITS": json.dumps(
        [
            {"name": f"{scope}-{key}", "limit": _HIGH, "window_s": 60, "scope": scope, "key": key}
            for scope, key in (("login", "ip"), ("public", "ip"), ("api", "user"), ("meta", "ip"))
        ]
    ),
    # Auth's own per-address budgets: the run's random logins and resets all come from here.
    "AUTH_LOGIN_IP_FREE_ATTEMPTS": str(_HIGH),
    "AUTH_RESET_REQUESTS_PER_IP_HOUR": str(_HIGH),
}
EXAMPLES = 40


@pytest.fixture(scope="module")
async def gateway_url() -> AsyncIterator[str]:
    prefix = f"ctr{uuid.uuid4().hex[:10]}"
    async with running_system(prefix, ["auth", "tasks", "notifier", "gateway"], **STACK_ENV) as p:
        yield p["gateway"].url


def test_schemathesis_finds_no_failure_with_every_check_on(gateway_url: str) -> None:
    config = contract_config(max_examples=EXAMPLES)
    schema = schemathesis.openapi.from_url(f"{gateway_url}/openapi.json", config=config)
    fresh_user_auth(schema, gateway_url)
    fresh_idempotency_keys()
    outcome = run(schema)
    assert not outcome.failures, outcome.report()
    assert not outcome.errors, outcome.report()
    # Every phase ran, the stateful one along the links of a created task (get, patch, delete).
    assert set(outcome.scenarios) >= {"coverage", "fuzzing", "stateful"}, outcome.scenarios
    assert outcome.links >= 3


def _undeclare_401(document: dict[str, Any]) -> str:
    del document["paths"]["/api/tasks/stats"]["get"]["responses"]["401"]
    return "/api/tasks/stats"


def _declare_null_priority(document: dict[str, Any]) -> str:
    field = document["components"]["schemas"]["TaskPatch"]["properties"]["priority"]
    field["anyOf"] = [{"enum": field.pop("enum"), "type": field.pop("type")}, {"type": "null"}]
    return "/api/tasks/{task_id}"


@pytest.mark.parametrize(
    ("lie", "caught_as"),
    [
        (_undeclare_401, "ST103 Undocumented status code"),
        (_declare_null_priority, "ST202 Schema-valid request rejected"),
    ],
)
def test_a_contract_that_lies_is_caught(
    gateway_url: str, lie: Callable[[dict[str, Any]], str], caught_as: str
) -> None:
    """The check can fail: the served document with one lie in it, on that operation only."""
    document = httpx.get(f"{gateway_url}/openapi.json", timeout=10).json()
    path = lie(document)
    config = contract_config(max_examples=5, phases=["coverage"], base_url=gateway_url)
    schema = schemathesis.openapi.from_dict(document, config=config).include(path=path)
    fresh_user_auth(schema, gateway_url)
    outcome = run(schema)
    assert any(caught_as in failure for failure in outcome.failures), outcome.report()


def test_a_client_generated_from_the_contract_works(gateway_url: str, tmp_path: Path) -> None:
    """openapi-python-client reads the whole document (a warning fails it) and its client
    registers, logs in, creates and reads a task with typed models."""
    (tmp_path / "spec.json").write_bytes(httpx.get(f"{gateway_url}/openapi.json").content)
    (tmp_path / "config.yaml").write_text("post_hooks: []\n")  # no formatter on PATH needed
    generated = subprocess.run(
        [
            str(Path(sys.executable).with_name("openapi-python-client")),
            "generate",
            *("--path", str(tmp_path / "spec.json"), "--config", str(tmp_path / "config.yaml")),
            *("--meta", "none", "--output-path", str(tmp_path / "taskbus_client")),
            "--fail-on-warning",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert generated.returncode == 0, generated.stdout + generated.stderr
    sys.path.insert(0, str(tmp_path))
    try:
        _use_generated_client(gateway_url)
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m.split(".")[0] == "taskbus_client"]:
            del sys.modules[name]


def _use_generated_client(base_url: str) -> None:
    api = importlib.import_module("taskbus_client")
    models = importlib.import_module("taskbus_client.models")
    register = importlib.import_module("taskbus_client.api.auth.register")
    login = importlib.import_module("taskbus_client.api.auth.login")
    create = importlib.import_module("taskbus_client.api.tasks.create_task")
    get = importlib.import_module("taskbus_client.api.tasks.get_task")
    email = f"g{uuid.uuid4().hex[:12]}@example.com"
    with api.Client(base_url=base_url) as anonymous:
        body = models.RegisterIn(email=email, password=PASSWORD, name="Generated")
        registered = register.sync(client=anonymous, body=body)
        assert isinstance(registered, models.AuthOut), registered
        pair = login.sync(client=anonymous, body=models.LoginIn(email=email, password=PASSWORD))
    assert isinstance(pair, models.AuthOut), pair
    assert pair.user.email == email
    with api.AuthenticatedClient(base_url=base_url, token=pair.access_token) as me:
        created = create.sync_detailed(client=me, body=models.TaskCreate(title="from the spec"))
        assert created.status_code == 201
        assert isinstance(created.parsed, models.Task)
        fetched = get.sync(client=me, task_id=created.parsed.id)
        unknown = get.sync_detailed(client=me, task_id="0" * 24)
    assert isinstance(fetched, models.Task)
    assert (fetched.title, fetched.owner) == ("from the spec", registered.user.id)
    assert unknown.status_code == 404
    assert isinstance(unknown.parsed, models.Problem)  # errors parse as the declared Problem
