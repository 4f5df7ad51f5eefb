"""Producing commands into Taskbus over Kafka, and reading their answers (aiokafka).

A producer `<name>` writes to `taskbus.commands.<name>` and reads `taskbus.answers.<name>`; its
broker principal may do nothing else. Commands are built from the REST API's own models
(common.task_models), so a command the helper sends passes the same rules as POST /api/tasks.

    async with CommandProducer("crm", "127.0.0.1:9092") as producer:
        command_id = await producer.create_task(user_id, TaskCreate(title="Call back"))
        answer = await producer.answer_to(command_id)
        print(answer.type, answer.data)  # task.created.v1 or command.rejected.v1
"""

import asyncio
import contextlib
import uuid
from collections.abc import AsyncGenerator
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from common.clock import utcnow
from common.commands import Command, CompleteTask, CreateTask, UpdateTask
from common.events import Envelope, answers_topic, commands_topic
from common.task_models import TaskCreate, TaskPatch


class CommandProducer:
    """One producer's connection: send commands keyed by their user, read the answers."""

    def __init__(
        self, name: str, bootstrap: str, *, topic_prefix: str = "", **kafka_options: Any
    ) -> None:
        """`kafka_options` go to both aiokafka clients (e.g. SASL: security_protocol, ...)."""
        self.name = name
        self.commands_topic = f"{topic_prefix}{commands_topic(name)}"
        self.answers_topic = f"{topic_prefix}{answers_topic(name)}"
        self._bootstrap = bootstrap
        self._prefix = topic_prefix
        self._options = kafka_options
        self._producer: AIOKafkaProducer | None = None

    async def __aenter__(self) -> "CommandProducer":
        # acks=all with idempotence: an acknowledged command is on the broker, once.
        producer = AIOKafkaProducer(
            bootstrap_servers=self._bootstrap,
            client_id=f"producer-{self.name}",
            acks="all",
            enable_idempotence=True,
            **self._options,
        )
        try:
            await producer.start()
        except BaseException:
            await producer.stop()  # a broker that refused us leaves no open client behind
            raise
        self._producer = producer
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    def envelope(self, user_id: str, command: Command, command_id: str | None = None) -> Envelope:
        """The CloudEvents envelope of a command about `user_id` (a fresh id unless given)."""
        return Envelope(
            id=command_id or str(uuid.uuid4()),
            source=f"/producers/{self.name}",
            type=command.command_type,
            time=utcnow(),
            subject=user_id,
            data=command.model_dump(mode="json", exclude_unset=True),
        )

    async def send(self, envelope: Envelope) -> str:
        """Send an envelope keyed by its user and wait for the broker's ack; its id.

        Sending the same envelope again (same id) is safe: Taskbus acts on it once.
        """
        if self._producer is None:
            raise RuntimeError("use the producer as `async with CommandProducer(...)`")
        value = envelope.model_dump_json().encode()
        await self._producer.send_and_wait(self.commands_topic, value, key=envelope.key)
        return envelope.id

    async def create_task(self, user_id: str, task: TaskCreate) -> str:
        """Ask for a new task for the user; the command id (its answer's causationid)."""
        return await self.send(self.envelope(user_id, CreateTask(task=task)))

    async def update_task(self, user_id: str, task_id: str, changes: TaskPatch) -> str:
        """Ask to change the user's task (only the fields set in `changes`); the command id."""
        return await self.send(self.envelope(user_id, UpdateTask(task_id=task_id, changes=changes)))

    async def complete_task(self, user_id: str, task_id: str) -> str:
        """Ask to move the user's task to done; the command id."""
        return await self.send(self.envelope(user_id, CompleteTask(task_id=task_id)))

    async def answers(self, *, group: str | None = None) -> AsyncGenerator[Envelope, None]:
        """This producer's answers from the beginning (or from the group's committed offset).

        The group is named `producer-<name>...` (the broker lets the producer use only those;
        a topic prefix is put before it like before the topics); without one, each call reads
        everything again and commits nothing.
        """
        own = group or f"producer-{self.name}-{uuid.uuid4().hex[:8]}"
        consumer = AIOKafkaConsumer(
            self.answers_topic,
            bootstrap_servers=self._bootstrap,
            group_id=f"{self._prefix}{own}",
            auto_offset_reset="earliest",
            enable_auto_commit=group is not None,
            **self._options,
        )
        try:
            await consumer.start()  # inside: a refused start still closes the client
            async for record in consumer:
                yield Envelope.model_validate_json(record.value)
        finally:
            await consumer.stop()

    async def answer_to(
        self, command_id: str, *, group: str | None = None, within_s: float = 60.0
    ) -> Envelope:
        """The first answer to the command (its causationid); TimeoutError after `within_s`."""
        # aclosing: leaving the loop early must still stop the consumer.
        async with (
            asyncio.timeout(within_s),
            contextlib.aclosing(self.answers(group=group)) as read,
        ):
            async for answer in read:
                if answer.causationid == command_id:
                    return answer
        raise RuntimeError("the answers stream ended")  # a consumer iterates for ever
