"""A private FerretDB process for fault tests, so stopping it touches no shared database."""

import subprocess
from pathlib import Path

from tests.support.infra import STATE_DIR, free_port, wait_listening


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
        wait_listening(self.port, 30, "ferretdb")
        return self

    def kill(self) -> None:
        """SIGKILL and reap."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
