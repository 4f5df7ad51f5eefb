"""SASL/SCRAM and ACLs on the local broker: generated credentials, broker config, principals.

The first `make up` (or `make up-infra`) that starts the broker writes `var/kafka/credentials.json`
(mode 0600): the super user the stack's own tooling and the tests' observers use, and one SCRAM
user per service and per producer. From then on the broker is formatted and started with SASL:

- the client listener is SASL_PLAINTEXT with SCRAM-SHA-512; the controller listener takes SASL
  PLAIN from the super user only (SCRAM users live in the metadata log the controller serves, so
  it cannot authenticate its own connections with them), so no listener takes anonymous clients;
- KRaft's StandardAuthorizer with `allow.everyone.if.no.acl.found=false`: a principal can do
  only what common/kafka_acls.py grants it.

A broker already running without credentials (started before this existed) keeps running as it
is; the stack switches once it starts the broker itself, into a log dir of its own (`sasl-<port>`)
formatted with the super user, never an old one formatted without it.
"""

import json
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient

from common.kafka_acls import (
    SERVICES,
    all_service_acls,
    producer_acls,
    producer_principal,
    service_principal,
)
from common.kafka_admin import create_acls, upsert_scram_users
from common.settings import DEV_KAFKA_PASSWORD_MARKER

MECHANISM = "SCRAM-SHA-512"
PROTOCOL = "SASL_PLAINTEXT"
ADMIN_USER = "admin"
# Each service's env prefix (its pydantic-settings prefix): `<PREFIX>_KAFKA_USERNAME` wins over
# the shared `TASKBUS_KAFKA_USERNAME`, so one supervisord environment gives each its principal.
ENV_PREFIX = {"auth": "AUTH", "tasks": "TASKS", "notifier": "NOTIFIER", "gateway": "GATEWAY"}


def new_password() -> str:
    """A generated development password (marked: production settings refuse it)."""
    return DEV_KAFKA_PASSWORD_MARKER + secrets.token_urlsafe(24)


@dataclass
class Credentials:
    """The local stack's SCRAM users: the super user and every other one (name -> password)."""

    path: Path
    admin_password: str
    users: dict[str, str] = field(default_factory=dict)

    def save(self) -> None:
        """Write the file atomically, readable by its owner only."""
        body = {
            "security_protocol": PROTOCOL,
            "sasl_mechanism": MECHANISM,
            "admin": {"username": ADMIN_USER, "password": self.admin_password},
            "users": dict(sorted(self.users.items())),
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(body, out, indent=2)
        tmp.replace(self.path)

    def password(self, user: str, *, rotate: bool = False) -> str:
        """The user's password, generated (and kept) the first time or when rotating."""
        if rotate or user not in self.users:
            self.users[user] = new_password()
        return self.users[user]

    def admin_options(self) -> dict[str, Any]:
        """aiokafka client options of the super user."""
        return self.client_options(ADMIN_USER, self.admin_password)

    @staticmethod
    def client_options(username: str, password: str) -> dict[str, Any]:
        """aiokafka client options for one principal on the local broker."""
        return {
            "security_protocol": PROTOCOL,
            "sasl_mechanism": MECHANISM,
            "sasl_plain_username": username,
            "sasl_plain_password": password,
        }

    def admin_env(self) -> dict[str, str]:
        """TASKBUS_ variables that make a process connect as the super user."""
        return {
            "TASKBUS_KAFKA_SECURITY_PROTOCOL": PROTOCOL,
            "TASKBUS_KAFKA_SASL_MECHANISM": MECHANISM,
            "TASKBUS_KAFKA_USERNAME": ADMIN_USER,
            "TASKBUS_KAFKA_PASSWORD": self.admin_password,
        }

    def service_env(self, service: str) -> dict[str, str]:
        """The variables that make one service connect as its own principal."""
        prefix = ENV_PREFIX[service]
        user = service_principal(service)
        return {
            "TASKBUS_KAFKA_SECURITY_PROTOCOL": PROTOCOL,
            "TASKBUS_KAFKA_SASL_MECHANISM": MECHANISM,
            f"{prefix}_KAFKA_USERNAME": user,
            f"{prefix}_KAFKA_PASSWORD": self.users[user],
        }


def credentials_path(state: Path) -> Path:
    """Where the stack keeps its Kafka credentials (TASKBUS_KAFKA_CREDENTIALS_FILE moves it)."""
    default = state / "kafka" / "credentials.json"
    return Path(os.environ.get("TASKBUS_KAFKA_CREDENTIALS_FILE", default))


def producers_path(state: Path) -> Path:
    """The producers' policies the tasks service reads (TASKS_PRODUCERS_FILE)."""
    return state / "kafka" / "producers.json"


def load_credentials(path: Path) -> Credentials | None:
    """The credentials file, or None when the stack has none (a broker without SASL)."""
    try:
        body = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    return Credentials(path, body["admin"]["password"], dict(body["users"]))


def create_credentials(path: Path) -> Credentials:
    """Generate the super user's and every service's password (first start of the broker)."""
    credentials = Credentials(path, new_password())
    for service in SERVICES:
        credentials.password(service_principal(service))
    credentials.save()
    return credentials


def broker_properties(credentials: Credentials) -> dict[str, str]:
    """The broker settings that turn on SASL and the authorizer (over the template's)."""
    admin, password = ADMIN_USER, credentials.admin_password
    scram_login = "org.apache.kafka.common.security.scram.ScramLoginModule"
    plain_login = "org.apache.kafka.common.security.plain.PlainLoginModule"
    return {
        "listeners": "SASL_PLAINTEXT://127.0.0.1:@PORT@,CONTROLLER://127.0.0.1:@CONTROLLER_PORT@",
        "advertised.listeners": "SASL_PLAINTEXT://127.0.0.1:@PORT@",
        "listener.security.protocol.map": "SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:SASL_PLAINTEXT",
        "inter.broker.listener.name": "SASL_PLAINTEXT",
        "sasl.enabled.mechanisms": MECHANISM,
        "sasl.mechanism.inter.broker.protocol": MECHANISM,
        "listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config": (
            f'{scram_login} required username="{admin}" password="{password}";'
        ),
        "sasl.mechanism.controller.protocol": "PLAIN",
        "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
        "listener.name.controller.plain.sasl.jaas.config": (
            f'{plain_login} required username="{admin}" password="{password}"'
            f' user_{admin}="{password}";'
        ),
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "allow.everyone.if.no.acl.found": "false",
        "super.users": f"User:{admin}",
    }


def secure_properties(path: Path, credentials: Credentials, port: int, controller: int) -> None:
    """Rewrite a rendered broker config with SASL on, readable by its owner only (it holds the
    super user's password)."""
    values = {
        key: value.replace("@PORT@", str(port)).replace("@CONTROLLER_PORT@", str(controller))
        for key, value in broker_properties(credentials).items()
    }
    kept = [line for line in path.read_text().splitlines() if line.split("=", 1)[0] not in values]
    path.write_text("\n".join([*kept, *(f"{k}={v}" for k, v in values.items())]) + "\n")
    path.chmod(0o600)


def format_scram(credentials: Credentials) -> list[str]:
    """`kafka-storage format --add-scram` values: the super user exists from the first start."""
    return [f"{MECHANISM}=[name={ADMIN_USER},password={credentials.admin_password}]"]


def _admin(bootstrap: str, credentials: Credentials) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id="taskbus-stack",
        request_timeout_ms=10_000,
        **credentials.admin_options(),
    )


async def apply_principals(
    bootstrap: str,
    credentials: Credentials,
    topic_prefixes: Iterable[str] = ("",),
    producers: Iterable[str] = (),
) -> None:
    """Create (or refresh) every principal's SCRAM user and ACLs under each topic prefix."""
    # A producer named in the policies file without credentials has no principal to refresh.
    producers = [p for p in producers if producer_principal(p) in credentials.users]
    wanted = [service_principal(s) for s in SERVICES] + [producer_principal(p) for p in producers]
    users = {user: credentials.users[user] for user in wanted}
    acls = []
    for prefix in topic_prefixes:
        acls += all_service_acls(prefix)
        acls += [acl for name in producers for acl in producer_acls(name, prefix)]
    admin = _admin(bootstrap, credentials)
    await admin.start()
    try:
        await upsert_scram_users(admin, users, MECHANISM)
        await create_acls(admin, acls)
    finally:
        await admin.close()
