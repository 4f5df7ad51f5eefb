"""Prometheus metrics of the notifier, in the process registry that common/metrics serves."""

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, ConsumerRecord
from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# Names follow the shared dashboard (deploy/observability/grafana/dashboards/taskbus.json).
EMAILS = Counter(
    "taskbus_notifier_emails",
    "Handled events by outcome: sent, duplicate, retried, dead_lettered, or why none was sent",
    ["outcome"],
)
SENT = Counter("taskbus_notifier_emails_sent", "Mails accepted by the relay", ["kind"])
RETRIED = Counter("taskbus_notifier_retried", "Events re-published to a retry tier", ["tier"])
DEAD_LETTERED = Counter("taskbus_notifier_dead_lettered", "Events sent to the DLQ", ["reason"])
DUPLICATES = Counter("taskbus_notifier_duplicates_skipped", "Redelivered events already handled")
SKIPPED = Counter("taskbus_notifier_skipped", "Events that call for no mail", ["reason"])
# The one window in which a crash sends a mail twice: the relay's 250 to `sent` being durable.
ACCEPT_TO_RECORD = Histogram(
    "taskbus_notifier_accept_to_record_seconds",
    "From the relay accepting a mail to its `sent` record being acknowledged by the database",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0),
)

ConsumerSource = Callable[[], list[tuple[str, AIOKafkaConsumer | None]]]


@dataclass
class Metrics:
    """The counters, plus what the lag collector needs: live consumers and handled offsets."""

    emails: Counter = EMAILS
    sent: Counter = SENT
    retried: Counter = RETRIED
    dead_lettered: Counter = DEAD_LETTERED
    duplicates: Counter = DUPLICATES
    skipped: Counter = SKIPPED
    accept_to_record: Histogram = ACCEPT_TO_RECORD
    consumers: ConsumerSource = field(default=lambda: [])
    # (group, topic, partition) -> next offset to handle
    handled: dict[tuple[str, str, int], int] = field(default_factory=dict)

    def record_handled(self, group: str, record: ConsumerRecord[bytes, bytes]) -> None:
        """Remember how far this group got on the record's partition."""
        self.handled[(group, record.topic, record.partition)] = record.offset + 1


class ConsumerCollector(Collector):
    """Partitions owned and records behind the high watermark, computed at scrape time."""

    def __init__(self) -> None:
        self.live: list[Metrics] = []

    def collect(self) -> Iterator[Metric]:
        """One sample per owned partition whose high watermark is known."""
        assigned = GaugeMetricFamily(
            "taskbus_notifier_assigned_partitions", "Partitions this process owns", labels=["group"]
        )
        lag = GaugeMetricFamily(
            "taskbus_notifier_consumer_lag",
            "Records between the last handled one and the high watermark",
            labels=["group", "topic", "partition"],
        )
        for metrics in self.live:
            for group, consumer in metrics.consumers():
                if consumer is None:
                    continue
                owned = consumer.assignment()
                assigned.add_metric([group], len(owned))
                for tp in owned:
                    highwater = consumer.highwater(tp)
                    done = metrics.handled.get((group, tp.topic, tp.partition))
                    if highwater is not None and done is not None:
                        lag.add_metric(
                            [group, tp.topic, str(tp.partition)], max(0, highwater - done)
                        )
        yield assigned
        yield lag


COLLECTOR = ConsumerCollector()
REGISTRY.register(COLLECTOR)
