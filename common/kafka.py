"""Kafka plumbing: the broker every service uses, topic creation, publishing envelopes."""

from collections.abc import Iterable
from functools import cache
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.helpers import create_ssl_context
from faststream.kafka import KafkaBroker
from faststream.kafka.opentelemetry import KafkaTelemetryMiddleware
from faststream.kafka.prometheus import KafkaPrometheusMiddleware
from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import REGISTRY

from common.events import Envelope
from common.settings import ServiceSettings

_TOPIC_ALREADY_EXISTS = TopicAlreadyExistsError.errno
_tracer = trace.get_tracer("taskbus.kafka")


@cache
def _prometheus_middleware() -> KafkaPrometheusMiddleware:
    # One per process: its metric families can be registered only once.
    return KafkaPrometheusMiddleware(
        registry=REGISTRY, app_name="taskbus", metrics_prefix="taskbus"
    )


def kafka_options(settings: ServiceSettings) -> dict[str, Any]:
    """The security options of every aiokafka client (producer, consumer, admin) of `settings`.

    The one place credentials reach a client: each process connects as its own principal, whose
    ACLs (common/kafka_acls.py) allow only what it does.
    """
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return {}
    password = settings.kafka_password  # ServiceSettings requires it with SASL
    options: dict[str, Any] = {
        "security_protocol": protocol,
        "sasl_mechanism": settings.kafka_sasl_mechanism,
        "sasl_plain_username": settings.kafka_username,
        "sasl_plain_password": password.get_secret_value() if password else None,
    }
    if protocol == "SASL_SSL":
        options["ssl_context"] = create_ssl_context(cafile=settings.kafka_ssl_cafile)
    return options


def _broker_security(settings: ServiceSettings) -> BaseSecurity | None:
    """kafka_options in FastStream's terms (it also names the scheme in the AsyncAPI document)."""
    options = kafka_options(settings)
    if not options:
        return None
    kinds = {"SCRAM-SHA-512": SASLScram512, "SCRAM-SHA-256": SASLScram256, "PLAIN": SASLPlaintext}
    return kinds[options["sasl_mechanism"]](
        options["sasl_plain_username"],
        options["sasl_plain_password"],
        ssl_context=options.get("ssl_context"),
        use_ssl=options["security_protocol"] == "SASL_SSL",
    )


def make_broker(settings: ServiceSettings) -> KafkaBroker:
    """A FastStream broker whose producer never loses an acknowledged write.

    aiokafka defaults to acks=1 without idempotence: a leader failover can drop or duplicate
    records. Subscribers choose their own ack policy (commit after handling).
    """
    return KafkaBroker(
        # FastStream takes a string as one address; aiokafka's own clients split on commas.
        settings.kafka_bootstrap.split(","),
        client_id=settings.service_name,
        acks="all",
        enable_idempotence=True,
        allow_auto_create_topics=False,
        graceful_timeout=15.0,
        security=_broker_security(settings),
        # Trace context travels in Kafka headers; publish/consume counts go to /metrics.
        middlewares=[KafkaTelemetryMiddleware(), _prometheus_middleware()],
    )


async def ensure_topics(settings: ServiceSettings, names: Iterable[str]) -> None:
    """Create the (prefixed) topics if missing; safe to call from every replica at start-up."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap,
        client_id=f"{settings.service_name}-admin",
        **kafka_options(settings),
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [settings.topic(name) for name in names]
        replicas = settings.kafka_replication_factor
        missing = [
            NewTopic(name, settings.kafka_partitions, replicas)
            for name in wanted
            if name not in existing
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
    """Publish one envelope, keyed by its subject, and wait for the broker's acknowledgement.

    An envelope written earlier (an outbox entry) carries the traceparent of the request that made
    it; publishing under that parent keeps one trace from the HTTP request to the consumer.
    """
    headers = {"ce_type": event.type, "ce_id": event.id}
    parent = None
    if event.traceparent:
        parent = TraceContextTextMapPropagator().extract({"traceparent": event.traceparent})
    with _tracer.start_as_current_span(
        f"relay {event.type}",
        context=parent,
        kind=SpanKind.INTERNAL,
        attributes={"cloudevents.event_id": event.id, "cloudevents.event_type": event.type},
    ):
        await broker.publish(event, topic=settings.topic(topic), key=event.key, headers=headers)
