"""`make up`'s engine fails fast, naming the port, when a port is already taken."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.infra import ROOT, free_port

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
