"""Publishing side of the tasks service: event envelopes and the outbox relay.

The tasks service consumes nothing; every event it emits leaves through a task's outbox.
"""

import asyncio
from contextlib import suppress

import structlog
from faststream.kafka import KafkaBroker
from opentelemetry import propagate, trace
from opentelemetry.instrumentation.utils import suppress_instrumentation
from prometheus_client import Counter

from common.events import TASKS_TOPIC, Envelope, Payload, new_event
from common.kafka import publish
from common.metrics import BacklogGauge
from common.telemetry import current_traceparent
from services.tasks.outbox import Doc, OutboxStore
from services.tasks.settings import TasksSettings

SOURCE = "/tasks"
log = structlog.get_logger(__name__)
_tracer = trace.get_tracer(__name__)
PUBLISHED = Counter(
    "taskbus_tasks_outbox_published_total", "Outbox events published to Kafka, by type.", ["type"]
)
PUBLISH_FAILURES = Counter(
    "taskbus_tasks_outbox_publish_failures_total", "Outbox publish attempts that failed."
)


def wrap(payload: Payload, owner: str) -> Envelope:
    """A task event in its envelope, keyed by the owner, carrying the current trace."""
    return new_event(payload, source=SOURCE, subject=owner, traceparent=current_traceparent())


class OutboxRelay:
    """Publishes outbox entries in order per task, then removes exactly those entries."""

    def __init__(self, store: OutboxStore, broker: KafkaBroker, settings: TasksSettings) -> None:
        self._store = store
        self._broker = broker
        self._settings = settings
        self._wake = asyncio.Event()
        self._parallel = asyncio.Semaphore(16)
        self._backlog = BacklogGauge("tasks", store.pending_events)

    def wake(self) -> None:
        """Something was written: relay now instead of at the next interval."""
        self._wake.set()

    async def run(self) -> None:
        """Relay until cancelled."""
        while True:
            self._wake.clear()
            try:
                busy = await self.drain()
            except Exception:  # the relay outlives a bad round; it is logged
                log.exception("outbox relay round failed")
                busy = False
            if not busy:
                with suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._settings.relay_interval_s)

    async def drain(self) -> bool:
        """One round over pending tasks; True when a full batch moved (more may wait)."""
        # The relay's own reads, leases and removals would be a root trace per poll; each
        # publish still runs in the trace of the request that wrote the event (common.kafka).
        with suppress_instrumentation():
            await self._backlog.refresh()
            ids = await self._store.pending_ids(self._settings.relay_batch)
            moved = await asyncio.gather(*(self._relay_task(task_id) for task_id in ids))
        return len(ids) == self._settings.relay_batch and sum(moved) > 0

    async def _relay_task(self, task_id: str) -> int:
        async with (
            self._parallel,
            self._store.leases.hold(
                f"r:{task_id}", ttl_s=self._settings.relay_lease_s, wait_s=0
            ) as held,
        ):
            if not held:
                return 0  # another replica is on it
            done: list[Doc] = []
            for entry in await self._store.outbox(task_id):
                try:
                    await self._publish(Envelope.model_validate(entry["event"]))
                except Exception:  # any failure: keep the entry, retry later
                    PUBLISH_FAILURES.inc()
                    # Later entries wait: order per task matters more than progress.
                    log.exception("publishing failed; retrying later", event_id=entry["id"])
                    break
                PUBLISHED.labels(entry["event"]["type"]).inc()
                done.append(entry)
            if done:
                await self._store.remove_published(task_id, done)
            return len(done)

    async def _publish(self, event: Envelope) -> None:
        parent = propagate.extract({"traceparent": event.traceparent or ""})
        with _tracer.start_as_current_span(
            f"{TASKS_TOPIC} publish", context=parent, kind=trace.SpanKind.PRODUCER
        ) as span:
            span.set_attribute("messaging.message.id", event.id)
            await publish(self._broker, self._settings, TASKS_TOPIC, event)
