"""Commands through a broker with SASL/SCRAM and ACLs on (issue 13): each side as its principal.

The tasks process connects as `svc-tasks` with only the ACLs of common/kafka_acls.py, the
producer as `producer-<name>` (its own command topic and answers, nothing else), so a grant the
command feed, the user feed or the answers need and lacks fails this test.
"""

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from pymongo import AsyncMongoClient

from client.producer import CommandProducer
from common.commands import CREATE
from common.events import USERS_TOPIC, UserRegistered, commands_topic, new_event
from common.kafka_acls import producer_principal
from common.task_models import TaskCreate
from deploy.local.kafka_security import Credentials, apply_principals, create_credentials
from tests.support.infra import KAFKA_BOOTSTRAP, KAFKA_CREDENTIALS, MONGO_URL
from tests.support.kafka_broker import KafkaCluster
from tests.support.tasks import tasks_process
from tests.support.tokens import SigningKey
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
async def secure(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[str, Credentials]]:
    """The shared broker if it runs with SASL, else a private one with generated credentials."""
    if KAFKA_CREDENTIALS is not None:
        users = dict(KAFKA_CREDENTIALS.users)
        yield (
            KAFKA_BOOTSTRAP,
            Credentials(Path("/nonexistent"), KAFKA_CREDENTIALS.admin_password, users),
        )
        return
    state = tmp_path_factory.mktemp("kafka-sasl")
    credentials = create_credentials(state / "credentials.json")
    cluster = await KafkaCluster(state, credentials=credentials).start()
    try:
        yield cluster.bootstrap, credentials
    finally:
        cluster.stop()


async def test_a_producer_principal_creates_tasks_and_reads_its_answers_through_the_acls(
    secure: tuple[str, Credentials], prefix: str, tmp_path: Path
) -> None:
    bootstrap, credentials = secure
    name = f"p{uuid.uuid4().hex[:8]}"
    credentials.password(producer_principal(name))
    await apply_principals(bootstrap, credentials, [f"{prefix}."], [name])
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **credentials.admin_options())
    await admin.start()
    try:  # what `make producer` and auth make: the command topic, the users topic
        topics = [f"{prefix}.{t}" for t in (commands_topic(name), USERS_TOPIC)]
        await admin.create_topics([NewTopic(t, 2, 1) for t in topics])
    finally:
        await admin.close()
    auth = AIOKafkaProducer(bootstrap_servers=bootstrap, **credentials.admin_options())
    await auth.start()
    try:
        event = new_event(
            UserRegistered(user_id="u1", email="u1@example.com", name="U"),
            source="/auth",
            subject="u1",
        )
        await auth.send_and_wait(topics[1], event.model_dump_json().encode(), key=b"u1")
    finally:
        await auth.stop()
    producers = tmp_path / "producers.json"
    producers.write_text(json.dumps({name: {"types": [CREATE], "users": "*"}}))
    env = {
        **credentials.service_env("tasks"),
        "TASKBUS_KAFKA_BOOTSTRAP": bootstrap,
        "TASKS_PRODUCERS_FILE": str(producers),
        "TASKS_REMINDERS_ENABLED": "false",
    }
    tasks = tasks_process(prefix, SigningKey.generate(), **env).start()
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(MONGO_URL, tz_aware=True)
    try:
        tasks.wait_ready()

        async def known() -> bool:
            return await mongo[f"{prefix}_tasks"]["users"].count_documents({}) == 1

        await eventually(known, what="the user feed, as svc-tasks")
        own = Credentials.client_options(
            producer_principal(name), credentials.users[producer_principal(name)]
        )
        async with CommandProducer(name, bootstrap, topic_prefix=f"{prefix}.", **own) as producer:
            command_id = await producer.create_task("u1", TaskCreate(title="through SASL"))
            group = f"{producer_principal(name)}-answers"
            answer = await producer.answer_to(command_id, group=group)
        assert answer.type == "task.created.v1"
        assert answer.data["task"]["title"] == "through SASL"
    finally:
        tasks.stop()
        await mongo.close()
