"""Prometheus metrics of one notifier app (own registry, so tests can build several apps)."""

import asyncio
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest


class Metrics:
    """Counters for what happened to events, and consumer lag per partition."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.sent = Counter(
            "notifier_emails_sent", "Mails accepted by the relay", ["kind"], registry=r
        )
        self.retried = Counter(
            "notifier_retried", "Events sent to a retry tier", ["tier"], registry=r
        )
        self.dead_lettered = Counter(
            "notifier_dead_lettered", "Events sent to the DLQ", ["reason"], registry=r
        )
        self.duplicates = Counter(
            "notifier_duplicates_skipped", "Redelivered events already handled", registry=r
        )
        self.skipped = Counter(
            "notifier_skipped", "Events that call for no mail", ["reason"], registry=r
        )
        self.lag = Gauge(
            "notifier_consumer_lag",
            "Records behind the partition's high watermark",
            ["group", "topic", "partition"],
            registry=r,
        )

    async def render(self, consumers: Iterable[tuple[str, AIOKafkaConsumer | None]]) -> bytes:
        """Refresh the lag gauge from the live consumers, then render the text format."""
        self.lag.clear()
        for group, consumer in consumers:
            if consumer is None:
                continue
            for tp in consumer.assignment():
                highwater = consumer.highwater(tp)
                if highwater is None:
                    continue  # nothing fetched from this partition yet
                try:
                    position = await asyncio.wait_for(consumer.position(tp), 0.5)
                except (TimeoutError, AssertionError):
                    continue  # revoked or resetting meanwhile
                self.lag.labels(group, tp.topic, str(tp.partition)).set(
                    max(0, highwater - position)
                )
        return generate_latest(self.registry)
