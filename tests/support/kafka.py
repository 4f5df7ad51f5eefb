"""Reading events off real Kafka in tests."""

import asyncio
import uuid
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer

from common.events import Envelope
from tests.support.infra import KAFKA_BOOTSTRAP


async def collect_events(
    topic: str,
    until: Callable[[list[Envelope]], bool],
    within: float = 30.0,
) -> list[Envelope]:
    """Read `topic` from the beginning until `until(events)` holds; TimeoutError otherwise."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=KAFKA_BOOTSTRAP,
        group_id=f"test-{uuid.uuid4().hex}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    events: list[Envelope] = []
    try:
        async with asyncio.timeout(within):
            while not until(events):
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    events.extend(Envelope.model_validate_json(r.value) for r in records)
    finally:
        await consumer.stop()
    return events
