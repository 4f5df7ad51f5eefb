"""Publishing side of the tasks service: event envelopes, outbox entries and the relay.

The tasks service consumes nothing; every event it emits leaves through a task's outbox
(common.outbox): the write that changes a task carries its event in the same document.
"""

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

from faststream.kafka import KafkaBroker
from prometheus_client import Counter
from pymongo.asynchronous.collection import AsyncCollection

from common.events import TASKS_TOPIC, Envelope, Payload, new_event
from common.kafka import publish
from common.outbox import OutboxEntry, OutboxSource, entry
from common.relay import OutboxRelay, Publish
from common.telemetry import current_traceparent
from services.tasks.locks import DocLocks, write_key
from services.tasks.settings import TasksSettings

SOURCE = "/tasks"
PUBLISHED = Counter(
    "taskbus_tasks_outbox_published_total", "Outbox events published to Kafka, by type.", ["type"]
)
PUBLISH_FAILURES = Counter(
    "taskbus_tasks_outbox_publish_failures_total", "Outbox publish attempts that failed."
)


def wrap(payload: Payload, owner: str) -> Envelope:
    """A task event in its envelope, keyed by the owner, carrying the current trace."""
    return new_event(payload, source=SOURCE, subject=owner, traceparent=current_traceparent())


def task_entry(event: Envelope) -> OutboxEntry:
    """The outbox entry that publishes a task event on the tasks topic."""
    return entry(TASKS_TOPIC, event)


def outbox_relay(
    tasks: AsyncCollection[dict[str, Any]],
    locks: DocLocks,
    broker: KafkaBroker,
    settings: TasksSettings,
) -> OutboxRelay:
    """The relay of the tasks' outboxes; its leases live with the write locks (one sweep)."""

    @asynccontextmanager
    async def guard(task_ids: Sequence[str]) -> AsyncIterator[set[str]]:
        # FerretDB rewrites the whole document on an update: removal waits for the writers.
        keys = {write_key(task_id): task_id for task_id in task_ids}
        async with locks.hold_many(list(keys), wait_s=settings.lock_wait_s) as held:
            yield {keys[key] for key in held}

    # A deleted task stays as a tombstone holding task.deleted.v1 until that is published.
    source = OutboxSource(tasks, guard=guard, tombstone={"deleted": True})
    return relay_over(source, partial(_counted_publish, broker, settings), locks, settings, "tasks")


def relay_over(
    source: OutboxSource, publish: Publish, locks: DocLocks, settings: TasksSettings, service: str
) -> OutboxRelay:
    """A relay of one source with the service's relay settings, leased in the locks collection."""
    return OutboxRelay(
        [source],
        publish,
        locks.collection,
        service=service,
        interval_s=settings.relay_interval_s,
        batch=settings.relay_batch,
        lease_s=settings.relay_lease_s,
        backlog_every_s=settings.backlog_refresh_s,
    )


def backlog_full(relay: OutboxRelay, settings: TasksSettings) -> bool:
    """Whether writes must wait: too many events unpublished, or published but not cleared."""
    return relay.backlog > settings.backlog_max or relay.uncleared > settings.uncleared_max


async def _counted_publish(
    broker: KafkaBroker, settings: TasksSettings, topic: str, event: Envelope
) -> None:
    try:
        await publish(broker, settings, topic, event)
    except Exception:
        PUBLISH_FAILURES.inc()
        raise
    PUBLISHED.labels(event.type).inc()
