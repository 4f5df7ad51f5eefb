"""Kafka credentials in tests: the local stack's super user, per-service principals, ACLs.

When the shared broker runs with SASL (the stack wrote var/kafka/credentials.json), every test
client and every process a test starts connects as the super user (the tests' observer) unless
it is given a principal of its own; services started by `running_system` connect as their own
`svc-<name>` with the ACLs of common/kafka_acls.py granted for the test's topic prefix, so a
missing ACL fails the tests as it would fail the stack.
"""

import os
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from common.kafka import kafka_options
from common.settings import ServiceSettings
from deploy.local.kafka_security import Credentials, apply_principals, load_credentials

# What production needs of Kafka (SASL_SSL, a real password): unit tests of other production
# rules pass these so the Kafka rule is not the one that refuses.
PRODUCTION_KAFKA: dict[str, Any] = {
    "kafka_security_protocol": "SASL_SSL",
    "kafka_username": "svc-test",
    "kafka_password": SecretStr("a-production-grade-kafka-password"),
}
PRODUCTION_KAFKA_ENV = {
    "TASKBUS_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "TASKBUS_KAFKA_USERNAME": "svc-test",
    "TASKBUS_KAFKA_PASSWORD": "a-production-grade-kafka-password",
}


# What observer_env sets (the super user's connection): unit tests clear them (tests/unit).
OBSERVER_ENV_NAMES = (
    "TASKBUS_KAFKA_SECURITY_PROTOCOL",
    "TASKBUS_KAFKA_SASL_MECHANISM",
    "TASKBUS_KAFKA_USERNAME",
    "TASKBUS_KAFKA_PASSWORD",
)


def stack_credentials(state: Path) -> Credentials | None:
    """The local stack's credentials (None: its broker runs without SASL)."""
    default = state / "kafka" / "credentials.json"
    return load_credentials(Path(os.environ.get("TASKBUS_KAFKA_CREDENTIALS_FILE", default)))


def observer_env(credentials: Credentials | None) -> dict[str, str]:
    """Variables that make a process (or ServiceSettings()) connect as the super user."""
    return credentials.admin_env() if credentials else {}


def client_options() -> dict[str, Any]:
    """aiokafka options for a test's own client (the super user when SASL is on)."""
    return kafka_options(ServiceSettings())


def service_env(credentials: Credentials | None, services: list[str]) -> dict[str, str]:
    """Each service's own principal (its `<SERVICE>_KAFKA_*` variables)."""
    if credentials is None:
        return {}
    env: dict[str, str] = {}
    for service in services:
        env |= credentials.service_env(service)
    return env


async def grant_services(credentials: Credentials | None, bootstrap: str, prefix: str) -> None:
    """The services' SCRAM users and their ACLs for topics and groups under `prefix`."""
    if credentials is not None:
        await apply_principals(bootstrap, credentials, [prefix])
