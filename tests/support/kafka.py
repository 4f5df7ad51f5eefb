"""Reading events off real Kafka in tests."""

import asyncio
import uuid
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer

from common.events import Envelope
from tests.support.infra import KAFKA_BOOTSTRAP
from tests.support.kafka_auth import client_options

Record = tuple[bytes, dict[str, str]]  # value, headers


async def read_records(
    topic: str, until: Callable[[list[Record]], bool], within: float = 30.0
) -> list[Record]:
    """Read `topic` from the beginning until `until(records)` holds; TimeoutError otherwise."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=KAFKA_BOOTSTRAP,
        group_id=f"test-{uuid.uuid4().hex}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **client_options(),
    )
    await consumer.start()
    found: list[Record] = []
    try:
        async with asyncio.timeout(within):
            while not until(found):
                batch = await consumer.getmany(timeout_ms=300)
                for records in batch.values():
                    found.extend(
                        (r.value or b"", {k: v.decode() for k, v in r.headers}) for r in records
                    )
    finally:
        await consumer.stop()
    return found


async def collect_events(
    topic: str,
    until: Callable[[list[Envelope]], bool],
    within: float = 30.0,
) -> list[Envelope]:
    """Read `topic` from the beginning until `until(events)` holds; TimeoutError otherwise."""

    def parsed(records: list[Record]) -> list[Envelope]:
        return [Envelope.model_validate_json(value) for value, _ in records]

    records = await read_records(topic, lambda found: until(parsed(found)), within)
    return parsed(records)
