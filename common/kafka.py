"""Kafka plumbing: the broker every service uses, topic creation, publishing envelopes."""

from collections.abc import Iterable

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from faststream.kafka import KafkaBroker

from common.events import Envelope
from common.settings import ServiceSettings

_TOPIC_ALREADY_EXISTS = TopicAlreadyExistsError.errno


def make_broker(settings: ServiceSettings) -> KafkaBroker:
    """A FastStream broker whose producer never loses an acknowledged write.

    aiokafka defaults to acks=1 without idempotence: a leader failover can drop or duplicate
    records. Subscribers choose their own ack policy (commit after handling).
    """
    return KafkaBroker(
        settings.kafka_bootstrap,
        client_id=settings.service_name,
        acks="all",
        enable_idempotence=True,
        allow_auto_create_topics=False,
        graceful_timeout=15.0,
    )


async def ensure_topics(settings: ServiceSettings, names: Iterable[str]) -> None:
    """Create the (prefixed) topics if missing; safe to call from every replica at start-up."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap, client_id=f"{settings.service_name}-admin"
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [settings.topic(name) for name in names]
        missing = [
            NewTopic(name, settings.kafka_partitions, 1) for name in wanted if name not in existing
        ]
        if not missing:
            return
        response = await admin.create_topics(missing)
        for topic, code, *_ in response.topic_errors:
            if code not in (0, _TOPIC_ALREADY_EXISTS):
                raise RuntimeError(f"cannot create topic {topic}: error code {code}")
    finally:
        await admin.close()


async def publish(
    broker: KafkaBroker, settings: ServiceSettings, topic: str, event: Envelope
) -> None:
    """Publish one envelope, keyed by its subject, and wait for the broker's acknowledgement."""
    headers = {"ce_type": event.type, "ce_id": event.id}
    if event.traceparent:
        headers["traceparent"] = event.traceparent
    await broker.publish(event, topic=settings.topic(topic), key=event.key, headers=headers)
