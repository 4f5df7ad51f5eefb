"""Runs real Taskbus processes (`python -m <module>`) for end-to-end tests."""

import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

from tests.support.infra import ROOT

# Every Taskbus process and the module that starts it (`python -m <module>`), in start order.
MODULES = {
    "auth": "services.auth",
    "tasks": "services.tasks",
    "notifier": "services.notifier",
    "gateway": "gateway",
}


class ServiceProcess:
    """One service process on its own port, with its output captured to a log file."""

    def __init__(self, module: str, port: int, env: Mapping[str, str], log_path: Path) -> None:
        self.module = module
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        # The gateway serves /metrics on a listener of its own, never on its public port.
        metrics_port = env.get("GATEWAY_METRICS_PORT") if module == "gateway" else None
        self.metrics_url = (
            f"http://127.0.0.1:{metrics_port}/metrics" if metrics_port else f"{self.url}/metrics"
        )
        self.log_path = log_path
        self._env = {**os.environ, **env}
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "ServiceProcess":
        """Start the process (does not wait)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", self.module], cwd=ROOT, env=self._env, stdout=log, stderr=log
        )
        log.close()
        return self

    def wait_ready(self, within: float = 60.0) -> "ServiceProcess":
        """Block until GET /readyz answers 200; fail with the log tail otherwise."""
        return self.wait_for("/readyz", within)

    def wait_live(self, within: float = 60.0) -> "ServiceProcess":
        """Block until GET /livez answers 200 (the process serves, ready or not)."""
        return self.wait_for("/livez", within)

    def wait_for(self, path: str, within: float) -> "ServiceProcess":
        """Block until GET `path` answers 200; fail with the log tail otherwise."""
        deadline = time.monotonic() + within
        last = ""
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(
                    f"{self.module} exited ({self._proc.returncode}):\n{self.log_tail()}"
                )
            try:
                response = httpx.get(f"{self.url}{path}", timeout=2.0)
                if response.status_code == 200:
                    return self
                last = response.text
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(0.2)
        raise TimeoutError(f"{self.module} not ready within {within}s: {last}\n{self.log_tail()}")

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not exit in time; returns the exit code."""
        if self._proc is None:
            return None
        self._proc.terminate()
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            return self._proc.wait()

    def kill(self) -> None:
        """SIGKILL: the crash case (no graceful shutdown, nothing flushed)."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()

    def log_tail(self, lines: int = 30) -> str:
        """The last lines the process wrote."""
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
