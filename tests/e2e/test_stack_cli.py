"""`make up`'s engine: fails fast naming a taken port; services on moved ports stay wired."""

import asyncio
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.support.infra import ROOT, free_port, infra_env
from tests.support.mail import wait_for_mail

pytestmark = pytest.mark.e2e


def test_up_with_a_taken_port_fails_fast_naming_it(tmp_path: Path) -> None:
    ports = {
        name: free_port()
        for name in (
            "TASKBUS_KAFKA_PORT",
            "TASKBUS_KAFKA_CONTROLLER_PORT",
            "TASKBUS_MONGO_PORT",
            "TASKBUS_SMTP_PORT",
            "GATEWAY_PORT",
            "AUTH_PORT",
            "TASKS_PORT",
            "NOTIFIER_PORT",
        )
    }
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        env = {
            **os.environ,
            **{k: str(v) for k, v in ports.items()},
            "TASKBUS_REDIS_PORT": str(taken),
            "TASKBUS_STATE_DIR": str(tmp_path),
        }
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "deploy.local.stack", "up"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        elapsed = time.monotonic() - started
    assert result.returncode == 1
    assert f"port {taken} (redis) is already in use" in result.stderr
    assert not (tmp_path / "run" / "supervisord.pid").exists()  # nothing was started
    print(f"failed in {elapsed:.2f}s")


def _stack(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "deploy.local.stack", *args]
    return subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240, check=False
    )


async def test_services_on_moved_ports_still_route_and_send_the_welcome_mail(
    tmp_path: Path,
) -> None:
    """Every URL comes from one table: moving each service's port moves its users' URLs too."""
    prefix = f"moved{uuid.uuid4().hex[:8]}"
    moved = {name: str(free_port()) for name in ("AUTH_PORT", "TASKS_PORT", "NOTIFIER_PORT")}
    moved["GATEWAY_PORT"] = str(free_port())
    moved["GATEWAY_METRICS_PORT"] = str(free_port())
    env = {**os.environ, **infra_env(prefix), **moved, "TASKBUS_STATE_DIR": str(tmp_path)}
    # The shared infrastructure (under var/) keeps running; only the services start here.
    for var in ("TASKBUS_KAFKA_BOOTSTRAP", "TASKBUS_MONGO_URL", "TASKBUS_REDIS_URL"):
        env.pop(var)
    up = await asyncio.to_thread(_stack, env, "up", "--apps")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"gateway   http://127.0.0.1:{moved['GATEWAY_PORT']}" in up.stdout
        email = f"{prefix}@example.com"
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{moved['GATEWAY_PORT']}") as c:
            registered = await c.post(
                "/api/auth/register",
                json={"email": email, "password": "a long enough password", "name": "Moved"},
            )
        assert registered.status_code == 201, registered.text
        assert len(await wait_for_mail(email, within=60)) == 1
    finally:
        down = await asyncio.to_thread(_stack, env, "down")
    assert down.returncode == 0, down.stdout + down.stderr
