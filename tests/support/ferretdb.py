"""A private FerretDB process (fault tests, the pushdown test, bench/), not the shared one."""

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from tests.support.infra import ROOT, STATE_DIR, free_port, wait_listening

# The binary make install builds; TASKBUS_FERRETDB_BIN tries another build (bench/, a new patch).
FERRETDB_BIN = Path(os.environ.get("TASKBUS_FERRETDB_BIN", STATE_DIR / "bin" / "ferretdb"))
BUILD = ROOT / "deploy" / "local" / "ferretdb" / "build.sh"


def ferretdb_version() -> str:
    """The FerretDB version deploy/local/install.sh builds."""
    for line in (ROOT / "deploy" / "local" / "install.sh").read_text().splitlines():
        if line.startswith("FERRETDB_VERSION="):
            return line.split("=", 1)[1]
    raise RuntimeError("FERRETDB_VERSION not found in deploy/local/install.sh")


def stamp(binary: Path) -> str:
    """What deploy/local/ferretdb/build.sh stamped `binary` with ('' if it did not build it)."""
    path = binary.with_name(binary.name + ".stamp")
    return path.read_text().strip() if path.exists() else ""


def patched_stamp() -> str:
    """The stamp of a build from the current deploy/local/ferretdb/*.patch."""
    command = [str(BUILD), "stamp", ferretdb_version()]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()


class FerretDB:
    """FerretDB (SQLite handler) on a free port with its own state directory."""

    def __init__(self, state: Path, binary: Path = FERRETDB_BIN, flags: Sequence[str] = ()) -> None:
        self.port = free_port()
        self.url = f"mongodb://127.0.0.1:{self.port}/?directConnection=true"
        self._state = state
        self._binary = binary
        self._flags = tuple(flags)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "FerretDB":
        """Start it and wait until it accepts connections."""
        (self._state / "data").mkdir(parents=True, exist_ok=True)
        (self._state / "state").mkdir(parents=True, exist_ok=True)
        command = [
            str(self._binary),
            "--handler=sqlite",
            f"--sqlite-url=file:{self._state / 'data'}/",
            f"--listen-addr=127.0.0.1:{self.port}",
            f"--state-dir={self._state / 'state'}",
            "--telemetry=disable",
            "--debug-addr=-",
            "--log-level=warn",
            *self._flags,
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
