"""Every Taskbus process starts with `python -m`, answers its probes, names a dead dependency."""

import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.infra import STATE_DIR, free_port, infra_env
from tests.support.processes import MODULES, ServiceProcess

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def services() -> Iterator[dict[str, ServiceProcess]]:
    prefix = f"probe{free_port()}"
    env = infra_env(prefix)
    procs = {}
    for name, module in MODULES.items():
        port = free_port()
        procs[name] = ServiceProcess(
            module,
            port,
            {**env, f"{name.upper()}_PORT": str(port)},
            STATE_DIR / "log" / "tests" / f"{prefix}-{name}.log",
        ).start()
    try:
        for proc in procs.values():
            proc.wait_ready()
        yield procs
    finally:
        for proc in procs.values():
            proc.stop()


@pytest.mark.parametrize("name", list(MODULES))
def test_livez_and_readyz_answer_200(services: dict[str, ServiceProcess], name: str) -> None:
    proc = services[name]
    assert httpx.get(f"{proc.url}/livez").status_code == 200
    ready = httpx.get(f"{proc.url}/readyz")
    assert ready.status_code == 200
    assert set(ready.json()["checks"].values()) == {"ok"}


def test_sigterm_runs_the_graceful_shutdown(tmp_path: Path) -> None:
    port = free_port()
    proc = (
        ServiceProcess(
            "services.tasks",
            port,
            {**infra_env("sigterm"), "TASKS_PORT": str(port)},
            tmp_path / "tasks.log",
        )
        .start()
        .wait_ready()
    )
    # uvicorn re-raises the signal after its graceful shutdown, so the exit is "by SIGTERM".
    assert proc.stop() == -signal.SIGTERM
    assert "Application shutdown complete." in proc.log_tail()


def test_readyz_names_the_unreachable_dependency(tmp_path: Path) -> None:
    port, dead = free_port(), free_port()
    env = {
        **infra_env("deadredis"),
        "GATEWAY_PORT": str(port),
        "GATEWAY_METRICS_PORT": str(free_port()),
        "TASKBUS_REDIS_URL": f"redis://127.0.0.1:{dead}/0",
    }
    proc = ServiceProcess("gateway", port, env, tmp_path / "gateway.log").start()
    try:
        response = httpx.get(f"{proc.wait_live().url}/readyz", timeout=10)
        assert response.status_code == 503
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["detail"] == "not ready: redis"
    finally:
        proc.stop()


def test_auth_starts_and_serves_while_kafka_is_unreachable(tmp_path: Path) -> None:
    port, dead = free_port(), free_port()
    env = {
        **infra_env(f"nokafka{port}"),
        "AUTH_PORT": str(port),
        "TASKBUS_KAFKA_BOOTSTRAP": f"127.0.0.1:{dead}",
    }
    proc = ServiceProcess(MODULES["auth"], port, env, tmp_path / "auth.log").start()
    try:
        # Ready, not crash-looping: its events wait in the outbox until Kafka answers.
        proc.wait_ready()
        body = {"email": f"nk{port}@example.com", "password": "correct horse 9", "name": "N"}
        response = httpx.post(f"{proc.url}/api/auth/register", json=body, timeout=10)
        assert response.status_code == 201, response.text
        assert "kafka not reachable yet" in proc.log_tail()
    finally:
        proc.stop()
