"""A private redis-server on a free port, for tests that kill and restart Redis."""

import subprocess
import time

import redis

from tests.support.infra import free_port


class RedisServer:
    """`redis-server --port P --save ''`: started, killed, started again on the same port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, within: float = 10.0) -> "RedisServer":
        """Start and wait until it answers PING."""
        self._proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
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
