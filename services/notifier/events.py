"""Kafka side of the notifier: source subscribers, the retry ladder and the dead-letter topic.

Offsets are committed only after a record is handled (AckPolicy.NACK_ON_ERROR: commit on success,
seek back on an infrastructure error). A record never blocks its partition for long: a failure that
may pass is re-published to a retry tier topic, one that cannot (or the last retry) goes to the
DLQ, then the offset is committed. Each retry tier holds records of one delay, so they are in due
order; a record not yet due pauses only its own partition until it is.
"""

import asyncio
import contextlib
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import IllegalStateError, KafkaError
from faststream import AckPolicy
from faststream.exceptions import NackMessage
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from faststream.kafka.subscriber.usecase import DefaultSubscriber
from pymongo.errors import ConnectionFailure

from common.events import NOTIFIER_DLQ_TOPIC, NOTIFIER_RETRY_TOPIC, TASKS_TOPIC, USERS_TOPIC
from services.notifier.delivery import Deliverer
from services.notifier.domain import (
    PermanentError,
    PoisonMessageError,
    TransientError,
    backoff_s,
    decode,
)
from services.notifier.metrics import Metrics
from services.notifier.settings import NotifierSettings

log = structlog.get_logger(__name__)

H_ATTEMPT = "x-attempt"
H_NOT_BEFORE = "x-not-before-ms"
H_ERROR = "x-error"
H_ORIGIN = "x-origin-topic"
H_DLQ_REASON = "x-dlq-reason"
H_DLQ_ATTEMPTS = "x-dlq-attempts"
H_DLQ_AT = "x-dlq-at"
_OWN_HEADERS = (H_ATTEMPT, H_NOT_BEFORE, H_ERROR, H_ORIGIN, H_DLQ_REASON, H_DLQ_ATTEMPTS, H_DLQ_AT)
# Errors of the infrastructure itself: nothing can be processed until it is back, so the record
# is not committed and is read again (after a pause) instead of being dead-lettered.
INFRA_ERRORS = (ConnectionFailure, KafkaError)


def retry_topic(tier: int) -> str:
    """The logical topic of retry tier `tier` (0-based; names are 1-based)."""
    return f"{NOTIFIER_RETRY_TOPIC}.{tier + 1}"


def notifier_topics(settings: NotifierSettings) -> list[str]:
    """Every topic the notifier reads or writes."""
    tiers = [retry_topic(t) for t in range(settings.retry_tiers)]
    return [USERS_TOPIC, TASKS_TOPIC, *tiers, NOTIFIER_DLQ_TOPIC]


def group_id(settings: NotifierSettings, purpose: str) -> str:
    """Consumer group per purpose, prefixed like the topics so test runs never share a group."""
    return f"{settings.topic_prefix}notifier.{purpose}"


def _int_header(headers: Mapping[str, str], name: str, default: int) -> int:
    try:
        return int(headers.get(name, default))
    except ValueError:
        return default


def _headers(record: ConsumerRecord[bytes, bytes]) -> dict[str, str]:
    return {name: value.decode(errors="replace") for name, value in record.headers or ()}


@dataclass
class Pipeline:
    """Routes each record to delivery, a retry tier or the DLQ."""

    broker: KafkaBroker
    settings: NotifierSettings
    deliverer: Deliverer
    metrics: Metrics
    rng: random.Random

    async def handle(self, record: ConsumerRecord[bytes, bytes], attempt: int) -> None:
        """Process one record; only infrastructure errors escape (the record is then re-read)."""
        headers = _headers(record)
        try:
            envelope = decode(record.value)
            with structlog.contextvars.bound_contextvars(event_id=envelope.id, attempt=attempt):
                outcome = await self.deliverer.deliver(envelope)
                log.info("event handled", event_type=envelope.type, outcome=str(outcome))
                self.metrics.emails.labels(str(outcome)).inc()
        except TransientError as exc:
            await self._retry(record, headers, attempt, str(exc))
        except (PermanentError, PoisonMessageError) as exc:
            await self.dead_letter(record, headers, attempt, type(exc).__name__, str(exc))
        except INFRA_ERRORS:
            log.exception("infrastructure error; the record will be read again")
            await asyncio.sleep(self.settings.infra_backoff_s)
            raise
        except Exception as exc:
            # A bug this record triggers would otherwise stall its partition forever.
            log.exception("unexpected error; dead-lettering the record")
            await self.dead_letter(record, headers, attempt, type(exc).__name__, str(exc))

    async def _retry(
        self, record: ConsumerRecord[bytes, bytes], headers: dict[str, str], attempt: int, err: str
    ) -> None:
        tier = attempt - 1  # attempt 1 failed -> tier 0 carries attempt 2
        if tier >= self.settings.retry_tiers:
            await self.dead_letter(record, headers, attempt, "RetriesExhausted", err)
            return
        s = self.settings
        delay = backoff_s(s.retry_base_delay_s, s.retry_factor, tier, s.retry_jitter, self.rng)
        out = {k: v for k, v in headers.items() if k not in _OWN_HEADERS}
        out |= {
            H_ATTEMPT: str(attempt + 1),
            H_NOT_BEFORE: str(int((time.time() + delay) * 1000)),
            H_ERROR: err[:500],
            H_ORIGIN: headers.get(H_ORIGIN, record.topic),
        }
        await self.broker.publish(
            record.value, topic=s.topic(retry_topic(tier)), key=record.key, headers=out
        )
        self.metrics.retried.labels(str(tier + 1)).inc()
        self.metrics.emails.labels("retried").inc()
        log.warning("delivery failed, retrying later", error=err, tier=tier + 1, delay_s=delay)

    async def dead_letter(
        self,
        record: ConsumerRecord[bytes, bytes],
        headers: Mapping[str, str],
        attempt: int,
        reason: str,
        err: str,
    ) -> None:
        """Park the record, byte for byte, on the DLQ with why and after how many attempts."""
        out = {k: v for k, v in headers.items() if k not in _OWN_HEADERS}
        out |= {
            H_DLQ_REASON: reason,
            H_ERROR: err[:1000],
            H_DLQ_ATTEMPTS: str(attempt),
            H_ORIGIN: headers.get(H_ORIGIN, record.topic),
            H_DLQ_AT: str(int(time.time() * 1000)),
        }
        await self.broker.publish(
            record.value or b"",
            topic=self.settings.topic(NOTIFIER_DLQ_TOPIC),
            key=record.key,
            headers=out,
        )
        self.metrics.dead_lettered.labels(reason).inc()
        self.metrics.emails.labels("dead_lettered").inc()
        log.error("record dead-lettered", reason=reason, error=err, attempts=attempt)


class PartitionPauser:
    """Pauses a retry partition until its head record is due; resumes it on a timer."""

    def __init__(self) -> None:
        self._timers: dict[TopicPartition, asyncio.TimerHandle] = {}

    def pause_until(self, consumer: AIOKafkaConsumer, tp: TopicPartition, due_s: float) -> None:
        """Stop fetching `tp` until `due_s` (epoch seconds)."""
        consumer.pause(tp)
        if (old := self._timers.pop(tp, None)) is not None:
            old.cancel()
        delay = max(0.0, due_s - time.time())
        loop = asyncio.get_running_loop()
        self._timers[tp] = loop.call_later(delay, self._resume, consumer, tp)

    def _resume(self, consumer: AIOKafkaConsumer, tp: TopicPartition) -> None:
        self._timers.pop(tp, None)
        # Revoked meanwhile: the new owner fetches it unpaused.
        with contextlib.suppress(IllegalStateError):
            consumer.resume(tp)

    def cancel(self) -> None:
        """Drop every pending resume (shutdown)."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()


@dataclass
class Subscribers:
    """The consumers of one notifier process, for lag metrics and shutdown."""

    groups: dict[str, object]
    pauser: PartitionPauser

    def consumers(self) -> list[tuple[str, AIOKafkaConsumer | None]]:
        """(group, live consumer) pairs; a concurrent subscriber has several per group."""
        pairs: list[tuple[str, AIOKafkaConsumer | None]] = []
        for group, sub in self.groups.items():
            many = getattr(sub, "consumer_subgroup", None)
            pairs.extend((group, c) for c in many or [getattr(sub, "consumer", None)])
        return pairs


def _subscriber(
    broker: KafkaBroker,
    settings: NotifierSettings,
    topics: list[str],
    group: str,
    *,
    description: str,
    workers: int = 1,
) -> DefaultSubscriber:
    """Commit after handling; a new group starts at the beginning.

    With `workers` > 1 (one topic only) FastStream runs that many consumers in the group, each
    handling its own partitions in order, so one slow partition does not hold up the others.
    """
    return broker.subscriber(
        *topics,
        group_id=group,
        ack_policy=AckPolicy.NACK_ON_ERROR,
        auto_offset_reset="earliest",
        session_timeout_ms=settings.consumer_session_timeout_ms,
        heartbeat_interval_ms=settings.consumer_session_timeout_ms // 3,
        max_workers=workers,
        title=group,
        description=description,
    )


def register(broker: KafkaBroker, settings: NotifierSettings, pipeline: Pipeline) -> Subscribers:
    """Attach the source and retry subscribers to the broker (before it starts)."""
    groups: dict[str, object] = {}
    for topic in (USERS_TOPIC, TASKS_TOPIC):
        group = group_id(settings, topic.rpartition(".")[2])
        groups[group] = _source(broker, settings, pipeline, topic, group)

    pauser = PartitionPauser()
    retry_group = group_id(settings, "retry")
    tiers = [settings.topic(retry_topic(t)) for t in range(settings.retry_tiers)]
    retries = _subscriber(
        broker,
        settings,
        tiers,
        retry_group,
        description="Retry tiers: each record is attempted again once its x-not-before-ms is due.",
    )

    @retries
    async def on_retry(message: KafkaMessage) -> None:
        record: ConsumerRecord[bytes, bytes] = message.raw_message
        headers = _headers(record)
        due_s = _int_header(headers, H_NOT_BEFORE, 0) / 1000
        if due_s > time.time():
            consumer = getattr(message, "consumer", None)
            if isinstance(consumer, AIOKafkaConsumer):
                pauser.pause_until(consumer, TopicPartition(record.topic, record.partition), due_s)
            raise NackMessage  # seek back: the record is read again once due
        attempt = max(2, _int_header(headers, H_ATTEMPT, 2))
        await pipeline.handle(record, attempt=attempt)
        pipeline.metrics.record_handled(retry_group, record)

    groups[retry_group] = retries
    return Subscribers(groups, pauser)


def _source(
    broker: KafkaBroker, settings: NotifierSettings, pipeline: Pipeline, topic: str, group: str
) -> DefaultSubscriber:
    description = (
        "user.registered.v1 -> welcome, user.password_reset_requested.v2 -> reset link, "
        "task.due_soon.v1 -> reminder; every other known type is committed and passed over, "
        "an unknown type or an undecodable record goes to the DLQ."
    )
    topics = [settings.topic(topic)]
    workers = settings.consumers_per_topic
    source = _subscriber(broker, settings, topics, group, description=description, workers=workers)

    @source
    async def on_source_event(message: KafkaMessage) -> None:
        await pipeline.handle(message.raw_message, attempt=1)
        pipeline.metrics.record_handled(group, message.raw_message)

    return source
