"""Running the tasks service in tests, and reading back what it stored and published."""

import asyncio
import json
import uuid

from aiokafka import AIOKafkaConsumer, TopicPartition

from common.events import Envelope
from tests.support.infra import KAFKA_BOOTSTRAP, STATE_DIR, free_port, infra_env
from tests.support.kafka_auth import client_options
from tests.support.processes import ServiceProcess
from tests.support.tokens import SigningKey


def tasks_process(prefix: str, key: SigningKey | None, **env: str) -> ServiceProcess:
    """A (not yet started) tasks process on a free port, isolated by prefix.

    With `key`, it trusts only that key (a static JWKS); without, it fetches TASKS_JWKS_URL.
    """
    port = free_port()
    keys = {"TASKS_JWKS_JSON": json.dumps(key.jwks())} if key else {}
    return ServiceProcess(
        "services.tasks",
        port,
        {
            **infra_env(prefix),
            "TASKS_PORT": str(port),
            **keys,
            "TASKS_RELAY_INTERVAL_S": "0.2",
            "TASKS_REMINDER_INTERVAL_S": "0.5",
            "TASKBUS_KAFKA_PARTITIONS": "2",
            **env,
        },
        STATE_DIR / "log" / "tests" / f"{prefix}-tasks-{port}.log",
    )


async def read_topic(topic: str, bootstrap: str = KAFKA_BOOTSTRAP) -> list[Envelope]:
    """Every event in `topic` right now, from the beginning to the current end offsets."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=f"test-{uuid.uuid4().hex}",
        enable_auto_commit=False,
        **client_options(),
    )
    await consumer.start()
    try:
        # aiokafka exposes no public "partitions of a topic I am not subscribed to" call.
        cluster = await consumer._client.fetch_all_metadata()
        partitions = [TopicPartition(topic, p) for p in cluster.partitions_for_topic(topic) or ()]
        if not partitions:
            return []
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        events: list[Envelope] = []
        async with asyncio.timeout(30):
            while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
                batch = await consumer.getmany(*partitions, timeout_ms=500)
                for records in batch.values():
                    events.extend(Envelope.model_validate_json(r.value) for r in records)
        return events
    finally:
        await consumer.stop()
