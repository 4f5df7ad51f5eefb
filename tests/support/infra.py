"""Where the shared test stack listens (the same variables `deploy/local/stack.py` reads)."""

import os
import socket
import time
from pathlib import Path

from tests.support.kafka_auth import observer_env, stack_credentials

ROOT = Path(__file__).resolve().parents[2]
STATE_DIR = Path(os.environ.get("TASKBUS_STATE_DIR", ROOT / "var"))
KAFKA_BOOTSTRAP = f"127.0.0.1:{os.environ.get('TASKBUS_KAFKA_PORT', '9092')}"
MONGO_URL = (
    f"mongodb://127.0.0.1:{os.environ.get('TASKBUS_MONGO_PORT', '27017')}/?directConnection=true"
)
REDIS_URL = f"redis://127.0.0.1:{os.environ.get('TASKBUS_REDIS_PORT', '6379')}/0"
SMTP_PORT = int(os.environ.get("TASKBUS_SMTP_PORT", "1025"))
MAIL_DIR = STATE_DIR / "mail"
# With SASL on the shared broker, every ServiceSettings() a test makes and every process it starts
# connects as the stack's super user unless given a principal of its own (tests/support/kafka_auth).
KAFKA_CREDENTIALS = stack_credentials(STATE_DIR)
os.environ.update(observer_env(KAFKA_CREDENTIALS))


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def infra_env(prefix: str) -> dict[str, str]:
    """Environment that points a Taskbus process at the shared stack, isolated by `prefix`.

    Topics, databases and Redis keys all carry the prefix, so concurrent runs never meet.
    """
    return {
        "TASKBUS_ENVIRONMENT": "test",
        "TASKBUS_KAFKA_BOOTSTRAP": KAFKA_BOOTSTRAP,
        "TASKBUS_TOPIC_PREFIX": f"{prefix}.",
        "TASKBUS_MONGO_URL": MONGO_URL,
        "TASKBUS_REDIS_URL": REDIS_URL,
        "TASKBUS_REDIS_PREFIX": f"{prefix}:",
        "TASKBUS_TRACE_DIR": str(STATE_DIR / "traces" / prefix),
        "AUTH_MONGO_DB": f"{prefix}_auth",
        "TASKS_MONGO_DB": f"{prefix}_tasks",
        "NOTIFIER_MONGO_DB": f"{prefix}_notifier",
        "NOTIFIER_SMTP_PORT": str(SMTP_PORT),
    }


def wait_listening(port: int, within: float, what: str) -> None:
    """Block until something accepts TCP connections on `port` (a process we just started)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        except OSError:
            time.sleep(0.1)  # the listener is another process: nothing here to await
        else:
            return
    raise TimeoutError(f"{what} did not listen on {port} within {within} s")
