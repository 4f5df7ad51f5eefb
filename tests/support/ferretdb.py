"""A private FerretDB process for fault tests, so stopping it touches no shared database."""

import socket
import subprocess
import time
from pathlib import Path

from tests.support.infra import STATE_DIR, free_port


class FerretDB:
    """FerretDB (SQLite handler) on a free port with its own state directory."""

    def __init__(self, state: Path) -> None:
        self.port = free_port()
        self.url = f"mongodb://127.0.0.1:{self.port}/?directConnection=true"
        self._state = state
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "FerretDB":
        """Start it and wait until it accepts connections."""
        (self._state / "data").mkdir(parents=True, exist_ok=True)
        (self._state / "state").mkdir(parents=True, exist_ok=True)
        command = [
            str(STATE_DIR / "bin" / "ferretdb"),
            "--handler=sqlite",
            f"--sqlite-url=file:{self._state / 'data'}/",
            f"--listen-addr=127.0.0.1:{self.port}",
            f"--state-dir={self._state / 'state'}",
            "--telemetry=disable",
            "--debug-addr=-",
            "--log-level=warn",
        ]
        log = (self._state / "ferretdb.log").open("ab")
        self.proc = subprocess.Popen(command, stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
            except OSError:
                time.sleep(0.1)
            else:
                return self
        raise TimeoutError("ferretdb did not listen within 30 s")

    def kill(self) -> None:
        """SIGKILL and reap."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
