"""The record headers and key the AsyncAPI document names are what common.kafka.publish sends."""

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from common.asyncapi import document
from common.events import TASKS_TOPIC, TaskDeleted, new_event
from common.infra import open_broker
from common.kafka import publish
from common.settings import ServiceSettings
from tests.support.infra import KAFKA_BOOTSTRAP
from tests.support.kafka import read_records

pytestmark = pytest.mark.integration
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


async def test_a_published_record_carries_the_documented_headers(prefix: str) -> None:
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        trace.set_tracer_provider(TracerProvider())  # as every service sets one up
    settings = ServiceSettings(
        kafka_bootstrap=KAFKA_BOOTSTRAP, topic_prefix=f"{prefix}.", service_name="asyncapi-test"
    )
    event = new_event(
        TaskDeleted(task_id="t1", owner="u1"), source="test", subject="u1", traceparent=TRACEPARENT
    )
    async with open_broker(settings, [TASKS_TOPIC]) as broker:
        await publish(broker, settings, TASKS_TOPIC, event)

    [(_, headers)] = await read_records(settings.topic(TASKS_TOPIC), bool)
    doc = document(settings)
    documented = doc["components"]["schemas"]["RecordHeaders"]["properties"]
    assert set(headers) <= set(documented)
    assert headers["ce_type"] == "task.deleted.v1"
    assert headers["ce_id"] == event.id
    # A child of the writer's span: same trace id as the envelope's traceparent.
    assert headers["traceparent"].split("-")[1] == TRACEPARENT.split("-")[1]
    assert headers["content-type"] == "application/json"
