"""A running Taskbus system for end-to-end tests: real processes wired to each other."""

import asyncio
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

from services.auth.keys import generate_key
from tests.support.auth import signing_keys_env
from tests.support.infra import KAFKA_CREDENTIALS, STATE_DIR, free_port, infra_env
from tests.support.kafka_auth import grant_services, service_env
from tests.support.processes import MODULES, ServiceProcess


@asynccontextmanager
async def running_system(
    prefix: str, names: Iterable[str], **extra_env: str
) -> AsyncIterator[dict[str, ServiceProcess]]:
    """Start the named services (isolated by `prefix`), wait until ready, stop them after.

    The gateway is pointed at the services started; one that is not started stands for a
    service that is down (its URL is a port nobody listens on).
    """
    names = [name for name in MODULES if name in set(names)]
    ports = {name: free_port() for name in MODULES}
    url = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    env = {
        **infra_env(prefix),
        "TASKBUS_KAFKA_PARTITIONS": "2",
        "TASKBUS_JWKS_URL": f"{url['auth']}/.well-known/jwks.json",
        "AUTH_SIGNING_KEYS": signing_keys_env(generate_key(f"{prefix}-key")),
        "AUTH_RELAY_POLL_S": "0.2",
        "TASKS_RELAY_INTERVAL_S": "0.2",
        "GATEWAY_AUTH_URL": url["auth"],
        "GATEWAY_TASKS_URL": url["tasks"],
        "GATEWAY_NOTIFIER_URL": url["notifier"],
        **{f"{name.upper()}_PORT": str(port) for name, port in ports.items()},
        "GATEWAY_METRICS_PORT": str(free_port()),
        # Each service as its own principal, with its ACLs for this prefix (SASL on).
        **service_env(KAFKA_CREDENTIALS, names),
        **extra_env,
    }
    # On the shared broker or a test's private one (same super user: tests/support/kafka_broker).
    await grant_services(KAFKA_CREDENTIALS, env["TASKBUS_KAFKA_BOOTSTRAP"], f"{prefix}.")
    logs = STATE_DIR / "log" / "tests"
    procs = {
        name: ServiceProcess(MODULES[name], ports[name], env, logs / f"{prefix}-{name}.log")
        for name in names
    }
    try:
        for proc in procs.values():
            proc.start()
        for proc in procs.values():
            await asyncio.to_thread(proc.wait_ready, 90)
        yield procs
    finally:
        for proc in procs.values():
            await asyncio.to_thread(proc.stop)
