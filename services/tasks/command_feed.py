"""The Kafka side of the command topics: read commands, follow the users topic, relay the ledger.

- `CommandFeed` subscribes to every `taskbus.commands.<producer>` topic by pattern (new producers'
  topics are found within `commands_metadata_max_age_ms`), in a consumer group of its own. Each
  partition's records are handled in order (one user's commands are on one partition), partitions
  concurrently; a partition's offset is committed after its records were handled. An
  infrastructure error ends the round uncommitted: the consumer starts again from the committed
  offsets and the handler's idempotence absorbs the redelivery.
- `UserFeed` records the user ids of `user.registered.v1` (commit after the write), which is how
  the tasks service knows that a command's user exists.
- `ledger_relay` publishes the command ledger's answers (services/tasks/ledger.py).
"""

import asyncio
import re
from collections.abc import Coroutine, Iterable
from functools import partial
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from faststream.kafka import KafkaBroker
from pydantic import ValidationError

from common.commands import Policies
from common.events import (
    COMMANDS_PREFIX,
    USERS_TOPIC,
    Envelope,
    UserRegistered,
    answers_topic,
)
from common.kafka import ensure_topics, kafka_options, publish
from common.outbox import OutboxSource
from common.relay import OutboxRelay
from services.tasks.commands import CommandHandler, producer_of
from services.tasks.events import backlog_full
from services.tasks.ledger import CommandLedger, UserDirectory
from services.tasks.locks import DocLocks
from services.tasks.quota import TaskQuota
from services.tasks.settings import TasksSettings
from services.tasks.storage import TaskStore

log = structlog.get_logger(__name__)
RETRY_S = 2.0


def _consumer(settings: TasksSettings, purpose: str, **options: Any) -> AIOKafkaConsumer:
    """A consumer in the group `<prefix>tasks.<purpose>` that commits only what was handled."""
    return AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        client_id=f"{settings.service_name}-{purpose}",
        group_id=f"{settings.topic_prefix}tasks.{purpose}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **kafka_options(settings),
        **options,
    )


def command_pattern(settings: TasksSettings) -> str:
    """The regular expression of every producer's (physical) command topic."""
    return re.escape(settings.topic(COMMANDS_PREFIX)) + r"(?!dlq$)[a-z0-9][a-z0-9_-]*$"


def producer_topics(producers: Iterable[str]) -> list[str]:
    """The answer topics of these producers (logical names).

    Their command topics are made with the producer (`make producer`): tasks may only read those.
    """
    return [answers_topic(p) for p in producers]


class CommandFeed:
    """Consumes the command topics for ever; failures are logged and the consumer restarted."""

    def __init__(self, settings: TasksSettings, handler: CommandHandler) -> None:
        self._settings = settings
        self._handler = handler
        self._answerable: set[str] = set()  # producers whose answers topic exists

    async def run(self) -> None:
        """Subscribe by pattern and handle records until cancelled."""
        while True:
            consumer = _consumer(
                self._settings,
                "commands",
                metadata_max_age_ms=self._settings.commands_metadata_max_age_ms,
                max_poll_records=self._settings.commands_batch,
            )
            try:
                known = self._handler.policies.current()
                await ensure_topics(self._settings, producer_topics(known))
                self._answerable |= set(known)
                await consumer.start()
                consumer.subscribe(pattern=command_pattern(self._settings))
                while True:
                    batch = await consumer.getmany(timeout_ms=1000)
                    async with asyncio.TaskGroup() as group:
                        for tp, records in batch.items():
                            group.create_task(self._partition(tp, records))
                    if batch:
                        # Only once every partition's records were handled: a failure above
                        # leaves them all uncommitted (handled again, idempotently).
                        await consumer.commit({tp: rs[-1].offset + 1 for tp, rs in batch.items()})
            except Exception as exc:  # noqa: BLE001 - the feed must outlive Kafka and Mongo outages
                log.warning("command feed failed; restarting", error=repr(exc)[:300])
                await asyncio.sleep(RETRY_S)
            finally:
                await consumer.stop()

    async def _partition(
        self, tp: TopicPartition, records: list[ConsumerRecord[bytes, bytes]]
    ) -> None:
        producer = producer_of(self._settings, tp.topic)
        if producer not in self._answerable:
            # A producer added while we run (or not at all): its answers need their topic.
            await ensure_topics(self._settings, [answers_topic(producer)])
            self._answerable.add(producer)
        for record in records:
            outcome = await self._handler.handle(record)
            log.debug("command handled", topic=tp.topic, offset=record.offset, outcome=outcome)


class UserFeed:
    """Follows the users topic into the user directory (from the beginning, for ever)."""

    def __init__(self, settings: TasksSettings, users: UserDirectory) -> None:
        self._settings = settings
        self._users = users

    async def run(self) -> None:
        """Record every registered user id until cancelled."""
        while True:
            consumer = _consumer(self._settings, "users")
            try:
                await ensure_topics(self._settings, [USERS_TOPIC])
                await consumer.start()
                consumer.subscribe([self._settings.topic(USERS_TOPIC)])
                while True:
                    batch = await consumer.getmany(timeout_ms=1000)
                    records = [r for rs in batch.values() for r in rs]
                    if records:
                        await self._users.add([u for r in records if (u := _registered(r))])
                        await consumer.commit()
            except Exception as exc:  # noqa: BLE001 - the feed must outlive Kafka and Mongo outages
                log.warning("user feed failed; restarting", error=repr(exc)[:300])
                await asyncio.sleep(RETRY_S)
            finally:
                await consumer.stop()


def _registered(record: ConsumerRecord[bytes, bytes]) -> str | None:
    try:
        event = Envelope.model_validate_json(record.value or b"")
        if event.type != UserRegistered.event_type:
            return None
        return UserRegistered.model_validate(event.data).user_id
    except ValidationError:
        return None  # not ours to judge: the notifier dead-letters malformed user events


def ledger_relay(
    ledger: CommandLedger, locks: DocLocks, broker: KafkaBroker, settings: TasksSettings
) -> OutboxRelay:
    """The relay of the command ledger's answers (its leases live with the task relay's)."""
    return OutboxRelay(
        [OutboxSource(ledger.collection)],
        partial(publish, broker, settings),
        locks.collection,
        service="tasks-commands",
        interval_s=settings.relay_interval_s,
        batch=settings.relay_batch,
        lease_s=settings.relay_lease_s,
        backlog_every_s=settings.backlog_refresh_s,
    )


def command_loops(
    store: TaskStore,
    broker: KafkaBroker,
    settings: TasksSettings,
    tasks_relay: OutboxRelay,
    quota: TaskQuota,
) -> list[Coroutine[Any, Any, None]]:
    """The background loops of the command topics, wired to the tasks store and relay."""
    db = store.tasks.database
    ledger, users = CommandLedger(db), UserDirectory(db)
    answers = ledger_relay(ledger, store.locks, broker, settings)
    handler = CommandHandler(
        store,
        ledger,
        users,
        Policies(settings.producers_file),
        settings,
        tasks_written=partial(tasks_relay.wrote, store.tasks.name),
        ledger_written=partial(answers.wrote, ledger.collection.name),
        backlog_full=partial(backlog_full, tasks_relay, settings),
        quota=quota,
    )
    loops = [CommandFeed(settings, handler).run(), UserFeed(settings, users).run()]
    if settings.relay_enabled:
        loops.append(answers.run())
    return loops
