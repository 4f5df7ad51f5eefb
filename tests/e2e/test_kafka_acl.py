"""The broker decides who may produce and read (issue 13): SASL/SCRAM and the ACL table.

Against a real broker with SASL and StandardAuthorizer on: the shared one once the stack runs it
with credentials, else a private one started here with freshly generated credentials.
"""

import asyncio
import json
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    TopicAuthorizationFailedError,
)
from pydantic import SecretStr

from common.events import TASKS_TOPIC, USERS_TOPIC, answers_topic, commands_topic
from common.kafka_acls import SERVICES, producer_principal, service_acls, service_principal
from common.kafka_admin import describe_acls
from common.kafka_setup import setup
from common.settings import ServiceSettings
from deploy.local.kafka_security import Credentials, apply_principals, create_credentials
from tests.support.infra import KAFKA_BOOTSTRAP, KAFKA_CREDENTIALS, ROOT
from tests.support.kafka_broker import KafkaCluster
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e


@dataclass
class SecureKafka:
    """A broker with SASL and ACLs on, and its credentials (the test's copy: never saved)."""

    bootstrap: str
    credentials: Credentials

    def options(self, user: str, password: str | None = None) -> dict[str, Any]:
        """Client options of `user` (its own password unless another is given)."""
        secret = self.credentials.users[user] if password is None else password
        return Credentials.client_options(user, secret)


@pytest.fixture(scope="module")
async def kafka(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SecureKafka]:
    """The shared broker if it runs with SASL, else a private one with generated credentials."""
    if KAFKA_CREDENTIALS is not None:
        users = dict(KAFKA_CREDENTIALS.users)
        copy = Credentials(Path("/nonexistent"), KAFKA_CREDENTIALS.admin_password, users)
        yield SecureKafka(KAFKA_BOOTSTRAP, copy)
        return
    state = tmp_path_factory.mktemp("kafka-sasl")
    credentials = create_credentials(state / "credentials.json")
    cluster = await KafkaCluster(state, credentials=credentials).start()
    try:
        yield SecureKafka(cluster.bootstrap, credentials)
    finally:
        cluster.stop()


@dataclass
class Producers:
    """Two producers, their principals and ACLs granted under a test prefix."""

    a: str
    b: str
    prefix: str

    def topic(self, logical: str) -> str:
        """The physical name under the test's prefix."""
        return f"{self.prefix}{logical}"


@pytest.fixture
async def producers(kafka: SecureKafka, prefix: str) -> Producers:
    """Producers `a...` and `b...` (no name a prefix of the other), every topic they use."""
    pair = Producers(f"a{uuid.uuid4().hex[:8]}", f"b{uuid.uuid4().hex[:8]}", f"{prefix}.")
    for name in (pair.a, pair.b):
        kafka.credentials.password(producer_principal(name))
    await apply_principals(kafka.bootstrap, kafka.credentials, [pair.prefix], [pair.a, pair.b])
    logical = [TASKS_TOPIC, USERS_TOPIC]
    logical += [t(n) for n in (pair.a, pair.b) for t in (commands_topic, answers_topic)]
    admin = AIOKafkaAdminClient(
        bootstrap_servers=kafka.bootstrap, **kafka.credentials.admin_options()
    )
    await admin.start()
    try:
        await admin.create_topics([NewTopic(pair.topic(t), 2, 1) for t in logical])
    finally:
        await admin.close()
    return pair


async def _produce(kafka: SecureKafka, options: dict[str, Any], topic: str) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka.bootstrap, request_timeout_ms=5000, acks="all", **options
    )
    try:
        await producer.start()
        await producer.send_and_wait(topic, b'{"probe": true}', key=b"user-1")
    finally:
        await producer.stop()


async def _read(kafka: SecureKafka, options: dict[str, Any], topic: str, group: str) -> list[bytes]:
    """Every record of `topic` as `options`' principal in `group` (waits for at least one)."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka.bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        request_timeout_ms=5000,
        **options,
    )
    found: list[bytes] = []
    try:
        await consumer.start()

        async def some() -> bool:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                found.extend(r.value or b"" for r in records)
            return bool(found)

        await eventually(some, 30, f"a record on {topic}")
    finally:
        await consumer.stop()
    return found


async def test_a_client_without_credentials_is_refused(kafka: SecureKafka) -> None:
    with pytest.raises(KafkaConnectionError):
        await _produce(kafka, {}, "anything")
    # The broker is up: the same request with credentials is answered.
    admin = AIOKafkaAdminClient(
        bootstrap_servers=kafka.bootstrap, **kafka.credentials.admin_options()
    )
    await admin.start()
    try:
        assert isinstance(await admin.list_topics(), list)
    finally:
        await admin.close()


async def test_a_wrong_password_fails_authentication(
    kafka: SecureKafka, caplog: pytest.LogCaptureFixture
) -> None:
    user = service_principal("tasks")
    with caplog.at_level(logging.ERROR, logger="aiokafka"), pytest.raises(KafkaConnectionError):
        await _produce(kafka, kafka.options(user, "not-the-password"), "anything")
    assert "SaslAuthenticationFailed" in caplog.text


async def test_a_producer_writes_only_its_own_commands_and_reads_only_its_own_answers(
    kafka: SecureKafka, producers: Producers
) -> None:
    a = kafka.options(producer_principal(producers.a))
    own, others = commands_topic(producers.a), commands_topic(producers.b)
    await _produce(kafka, a, producers.topic(own))
    with pytest.raises(TopicAuthorizationFailedError):
        await _produce(kafka, a, producers.topic(others))
    # The tasks service answers on the producer's topic; the producer reads it in its own group.
    answer = producers.topic(answers_topic(producers.a))
    await _produce(kafka, kafka.options(service_principal("tasks")), answer)
    group = f"{producers.prefix}{producer_principal(producers.a)}.reader"
    assert await _read(kafka, a, answer, group) == [b'{"probe": true}']
    b_answers = producers.topic(answers_topic(producers.b))
    await _produce(kafka, kafka.options(service_principal("tasks")), b_answers)
    with pytest.raises(TopicAuthorizationFailedError):
        await _read(kafka, a, b_answers, group)
    # Nor may it read commands, its own included: only the tasks service does.
    with pytest.raises(TopicAuthorizationFailedError):
        await _read(kafka, a, producers.topic(own), group)


async def test_a_producer_cannot_join_another_producers_consumer_group(
    kafka: SecureKafka, producers: Producers
) -> None:
    answer = producers.topic(answers_topic(producers.a))
    await _produce(kafka, kafka.options(service_principal("tasks")), answer)
    b_group = f"{producers.prefix}{producer_principal(producers.b)}.reader"
    with pytest.raises(GroupAuthorizationFailedError):
        await _read(kafka, kafka.options(producer_principal(producers.a)), answer, b_group)


async def test_a_service_can_do_only_what_its_acl_table_grants(
    kafka: SecureKafka, producers: Producers
) -> None:
    def as_service(name: str) -> dict[str, Any]:
        return kafka.options(service_principal(name))

    tasks, users = producers.topic(TASKS_TOPIC), producers.topic(USERS_TOPIC)
    with pytest.raises(TopicAuthorizationFailedError):
        await _produce(kafka, as_service("notifier"), tasks)  # it reads tasks, never writes
    with pytest.raises(TopicAuthorizationFailedError):
        await _produce(kafka, as_service("gateway"), users)
    with pytest.raises(TopicAuthorizationFailedError):
        await _produce(kafka, as_service("auth"), tasks)
    with pytest.raises(TopicAuthorizationFailedError):  # commands come from producers only
        await _produce(kafka, as_service("tasks"), producers.topic(commands_topic(producers.a)))
    await _produce(kafka, as_service("tasks"), tasks)
    group = f"{producers.prefix}notifier.probe"
    assert await _read(kafka, as_service("notifier"), tasks, group) == [b'{"probe": true}']
    with pytest.raises(GroupAuthorizationFailedError):  # not a notifier group name
        await _read(kafka, as_service("notifier"), tasks, f"{producers.prefix}gateway.tasks")


async def test_the_broker_holds_exactly_the_acl_table_for_a_prefix(
    kafka: SecureKafka, producers: Producers
) -> None:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=kafka.bootstrap, **kafka.credentials.admin_options()
    )
    await admin.start()
    try:
        for service in SERVICES:
            held = await describe_acls(admin, f"User:{service_principal(service)}")
            # The cluster-wide rules, and those under this test's prefix (other runs add theirs).
            mine = {
                a for a in held if a.resource == "cluster" or a.name.startswith(producers.prefix)
            }
            assert mine == set(service_acls(service, producers.prefix))
    finally:
        await admin.close()


async def test_kafka_setup_applies_the_table_a_cluster_operator_runs(
    kafka: SecureKafka, prefix: str
) -> None:
    """`python -m common.kafka_setup` (compose's kafka-setup) grants what the local stack does."""
    settings = ServiceSettings(
        kafka_bootstrap=kafka.bootstrap,
        topic_prefix=f"{prefix}.",
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_username="admin",
        kafka_password=SecretStr(kafka.credentials.admin_password),
    )
    users = {service_principal(s): kafka.credentials.users[service_principal(s)] for s in SERVICES}
    await setup(settings, users)
    topic = f"{prefix}.{TASKS_TOPIC}"
    admin = AIOKafkaAdminClient(
        bootstrap_servers=kafka.bootstrap, **kafka.credentials.admin_options()
    )
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1)])
        held = await describe_acls(admin, f"User:{service_principal('notifier')}")
    finally:
        await admin.close()
    assert set(service_acls("notifier", f"{prefix}.")) <= held
    await _produce(kafka, kafka.options(service_principal("tasks")), topic)  # the users work


def _make_producer(state: Path, kafka: SecureKafka, prefix: str, *args: str) -> dict[str, str]:
    """Run `make producer`'s module against `kafka`; the fields it prints."""
    env = {
        **os.environ,
        "TASKBUS_STATE_DIR": str(state),
        "TASKBUS_KAFKA_CREDENTIALS_FILE": str(state / "kafka" / "credentials.json"),
        "TASKBUS_KAFKA_PORT": kafka.bootstrap.rsplit(":", 1)[1],
        "TASKBUS_TOPIC_PREFIX": prefix,
        "TASKBUS_KAFKA_PARTITIONS": "1",
    }
    command = [sys.executable, "-m", "deploy.local.producer", *args]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [line.split(None, 1) for line in done.stdout.splitlines()[1:]]
    return {fields[0]: fields[1] for fields in lines if len(fields) == 2}


async def test_make_producer_prints_working_credentials_and_rotates_on_request(
    kafka: SecureKafka, prefix: str, tmp_path: Path
) -> None:
    # The stack's credentials file, copied: the command adds the producer to it.
    copy = Credentials(
        tmp_path / "kafka" / "credentials.json",
        kafka.credentials.admin_password,
        dict(kafka.credentials.users),
    )
    copy.save()
    name = f"crm{uuid.uuid4().hex[:6]}"
    first = await asyncio.to_thread(
        _make_producer, tmp_path, kafka, f"{prefix}.", name, "--types", "task.create.v1"
    )
    again = await asyncio.to_thread(_make_producer, tmp_path, kafka, f"{prefix}.", name)
    assert first["username"] == f"producer-{name}"
    assert again["password"] == first["password"]  # idempotent: the same credentials
    assert first["commands"].split()[1] == f"{prefix}.taskbus.commands.{name}"  # "topic <name>"
    policies = json.loads((tmp_path / "kafka" / "producers.json").read_text())
    assert policies[name] == {"types": ["task.create.v1"], "users": "*"}
    commands = f"{prefix}.{commands_topic(name)}"
    user = first["username"]
    await _produce(kafka, Credentials.client_options(user, first["password"]), commands)
    rotated = await asyncio.to_thread(
        _make_producer, tmp_path, kafka, f"{prefix}.", name, "--rotate", "--users", "u1,u2"
    )
    assert rotated["password"] != first["password"]
    await _produce(kafka, Credentials.client_options(user, rotated["password"]), commands)
    with pytest.raises(KafkaConnectionError):  # the old password no longer authenticates
        await _produce(kafka, Credentials.client_options(user, first["password"]), commands)
    policies = json.loads((tmp_path / "kafka" / "producers.json").read_text())
    assert policies[name] == {"types": ["task.create.v1"], "users": ["u1", "u2"]}
