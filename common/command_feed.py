"""Reading the producers' command topics: one loop for every service that handles commands.

`CommandFeed` subscribes to every `taskbus.commands.<producer>` topic by pattern (new producers'
topics are found within `metadata_max_age_ms`), in the service's own consumer group. Each user's
records (one key, so one partition) are handled in order, different users' concurrently; the
offsets are committed once every record of a fetch was handled. An infrastructure error ends the
round uncommitted: the consumer starts again from the committed offsets and the handler's
idempotence absorbs the redelivery. The tasks service handles the task
commands (services/tasks/commands.py), the notifier notification.send.v1.
"""

import asyncio
import re
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from common.commands import Policies
from common.events import COMMANDS_PREFIX, answers_topic
from common.kafka import ensure_topics, kafka_options
from common.settings import ServiceSettings

log = structlog.get_logger(__name__)
RETRY_S = 2.0
Handle = Callable[[ConsumerRecord[bytes, bytes]], Awaitable[str]]


def consumer(settings: ServiceSettings, group: str, **options: Any) -> AIOKafkaConsumer:
    """A consumer in the (prefixed) group `group` that commits only what was handled."""
    return AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        client_id=f"{settings.service_name}-{group}",
        group_id=f"{settings.topic_prefix}{group}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **kafka_options(settings),
        **options,
    )


def command_pattern(settings: ServiceSettings) -> str:
    """The regular expression of every producer's (physical) command topic."""
    return re.escape(settings.topic(COMMANDS_PREFIX)) + r"(?!dlq$)[a-z0-9][a-z0-9_-]*$"


def producer_of(settings: ServiceSettings, topic: str) -> str:
    """The producer whose command topic this (physical) topic is."""
    return topic.removeprefix(settings.topic(COMMANDS_PREFIX))


def producer_topics(producers: Iterable[str]) -> list[str]:
    """The answer topics of these producers (logical names).

    Their command topics are made with the producer (`make producer`): services only read them.
    """
    return [answers_topic(p) for p in producers]


class CommandFeed:
    """Consumes the command topics for ever; failures are logged and the consumer restarted."""

    def __init__(
        self,
        settings: ServiceSettings,
        group: str,
        handle: Handle,
        policies: Policies,
        *,
        metadata_max_age_ms: int = 30_000,
        batch: int = 200,
        parallel: int = 16,
    ) -> None:
        self._settings = settings
        self._group = group
        self._handle = handle
        self._policies = policies
        self._options = {"metadata_max_age_ms": metadata_max_age_ms, "max_poll_records": batch}
        self._answerable: set[str] = set()  # producers whose answers topic exists
        self._parallel = asyncio.Semaphore(parallel)  # commands handled at once

    async def run(self) -> None:
        """Subscribe by pattern and handle records until cancelled."""
        while True:
            reader = consumer(self._settings, self._group, **self._options)
            try:
                known = self._policies.current()
                await ensure_topics(self._settings, producer_topics(known))
                self._answerable |= set(known)
                await reader.start()
                reader.subscribe(pattern=command_pattern(self._settings))
                while True:
                    batch = await reader.getmany(timeout_ms=1000)
                    async with asyncio.TaskGroup() as group:
                        for tp, records in batch.items():
                            group.create_task(self._partition(tp, records))
                    if batch:
                        # Only once every partition's records were handled: a failure above
                        # leaves them all uncommitted (handled again, idempotently).
                        await reader.commit({tp: rs[-1].offset + 1 for tp, rs in batch.items()})
            except Exception as exc:  # noqa: BLE001 - the feed must outlive Kafka and Mongo outages
                log.warning("command feed failed; restarting", error=repr(exc)[:300])
                await asyncio.sleep(RETRY_S)
            finally:
                await reader.stop()

    async def _partition(
        self, tp: TopicPartition, records: list[ConsumerRecord[bytes, bytes]]
    ) -> None:
        producer = producer_of(self._settings, tp.topic)
        if producer not in self._answerable:
            # A producer added while we run (or not at all): its answers need their topic.
            await ensure_topics(self._settings, [answers_topic(producer)])
            self._answerable.add(producer)
        # Order matters per user (the key), not across users: each key's records in order, keys
        # concurrently (FerretDB's per-write latency, not the handler, bounds one sequence).
        by_key: dict[bytes | None, list[ConsumerRecord[bytes, bytes]]] = {}
        for record in records:
            by_key.setdefault(record.key, []).append(record)
        async with asyncio.TaskGroup() as group:
            for same_key in by_key.values():
                group.create_task(self._in_order(same_key))

    async def _in_order(self, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        for record in records:
            async with self._parallel:
                outcome = await self._handle(record)
            log.debug("command handled", topic=record.topic, offset=record.offset, outcome=outcome)
