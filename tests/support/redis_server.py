"""A private redis-server on a free port, for tests that kill and restart Redis."""

import shutil
import subprocess
import tempfile
import time

import redis

from tests.support.infra import free_port


class RedisServer:
    """`redis-server --port P --save ''`: started, killed, started again on the same port.

    Persistent: an append-only file fsynced on every write, so a SIGKILL forgets nothing.
    """

    def __init__(self, *, persistent: bool = False) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir = tempfile.mkdtemp(prefix="redis-") if persistent else None

    def _command(self) -> list[str]:
        command = ["redis-server", "--port", str(self.port), "--save", ""]
        if self._dir is None:
            return [*command, "--appendonly", "no"]
        return [*command, "--appendonly", "yes", "--appendfsync", "always", "--dir", self._dir]

    def start(self, within: float = 10.0) -> "RedisServer":
        """Start and wait until it answers PING."""
        self._proc = subprocess.Popen(
            self._command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + within
        while True:
            try:
                redis.Redis.from_url(self.url).ping()
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
            else:
                return self

    def kill(self) -> None:
        """SIGKILL: the crash case."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None

    def stop(self) -> None:
        """Kill it for good and remove its files."""
        self.kill()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
