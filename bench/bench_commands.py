"""Commands handled end to end against a raw aiokafka consume of the same records -> docs/.

Run: `uv run --frozen --no-sync python -m bench.bench_commands` (under a minute; needs the local
stack's Kafka and FerretDB). One tasks process reads one producer's command topic; COMMANDS
`task.create.v1` commands for USERS users are sent with the producer helper (client/producer.py),
and the run ends when every one has its answer on the producer's answers topic. The baseline
reads the same records off the command topic with a bare aiokafka consumer (no group, every
partition assigned), on the same broker, in the same run.
"""

import asyncio
import json
import os
import platform
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from pymongo import AsyncMongoClient

from client.producer import CommandProducer
from common.commands import CREATE, CreateTask
from common.events import commands_topic
from common.task_models import TaskCreate
from tests.support.commands import announce_users
from tests.support.infra import KAFKA_BOOTSTRAP, MONGO_URL
from tests.support.kafka import read_records
from tests.support.kafka_auth import client_options
from tests.support.tasks import tasks_process
from tests.support.tokens import SigningKey
from tests.support.waiting import eventually

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "bench-commands.md"
COMMANDS = 1_000
USERS = [f"bench-user-{n}" for n in range(10)]
PRODUCER = "bench"


async def _known(db_name: str) -> bool:
    async with AsyncMongoClient[dict[str, Any]](MONGO_URL) as client:
        return int(await client[db_name]["users"].count_documents({})) == len(USERS)


async def _end_to_end(prefix: str, producers_file: Path) -> float:
    """Seconds from the first command sent to the last answer read."""
    env = {
        "TASKS_PRODUCERS_FILE": str(producers_file),
        "TASKS_COMMANDS_METADATA_MAX_AGE_MS": "1000",
        "TASKS_MAX_TASKS_PER_USER": str(COMMANDS),
        "TASKS_REMINDERS_ENABLED": "false",
    }
    proc = tasks_process(prefix, SigningKey.generate(), **env).start()
    try:
        await asyncio.to_thread(proc.wait_ready)
        await eventually(lambda: _known(f"{prefix}_tasks"), what="every user known to tasks")
        producer = CommandProducer(
            PRODUCER, KAFKA_BOOTSTRAP, topic_prefix=f"{prefix}.", **client_options()
        )
        async with producer:
            answered = asyncio.create_task(
                read_records(producer.answers_topic, lambda found: len(found) >= COMMANDS, 300)
            )
            started = time.perf_counter()
            for n in range(COMMANDS):
                command = CreateTask(task=TaskCreate(title=f"command {n}"))
                await producer.send(producer.envelope(USERS[n % len(USERS)], command))
            await answered
            return time.perf_counter() - started
    finally:
        proc.stop()


async def _partitions(topic: str) -> list[int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA_BOOTSTRAP, **client_options())
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
        return sorted(p["partition"] for p in described["partitions"])
    finally:
        await admin.close()


async def _raw_consume(topic: str) -> float:
    """Seconds a bare consumer (no group: assigned every partition) takes to read the records."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=KAFKA_BOOTSTRAP, enable_auto_commit=False, **client_options()
    )
    await consumer.start()
    try:
        started = time.perf_counter()
        consumer.assign([TopicPartition(topic, p) for p in await _partitions(topic)])
        await consumer.seek_to_beginning()
        seen = 0
        while seen < COMMANDS:
            batch = await consumer.getmany(timeout_ms=1000)
            seen += sum(len(records) for records in batch.values())
        return time.perf_counter() - started
    finally:
        await consumer.stop()


async def main() -> None:
    """One run: commands end to end, then the raw consume of the same records; write the page."""
    prefix = f"benchcmd{uuid.uuid4().hex[:8]}"
    await announce_users(prefix, USERS, [PRODUCER])
    with tempfile.TemporaryDirectory() as tmp:
        producers_file = Path(tmp) / "producers.json"
        producers_file.write_text(json.dumps({PRODUCER: {"types": [CREATE], "users": "*"}}))
        handled_s = await _end_to_end(prefix, producers_file)
    raw_s = await _raw_consume(f"{prefix}.{commands_topic(PRODUCER)}")
    handled, raw = COMMANDS / handled_s, COMMANDS / raw_s
    row = (
        f"| {datetime.now(UTC):%Y-%m-%d %H:%M}, load {os.getloadavg()[0]:.1f} | {COMMANDS:,} "
        f"for {len(USERS)} users | {handled:.0f} commands/s ({handled_s:.1f} s) "
        f"| {raw:,.0f} records/s ({raw_s:.2f} s) | {handled / raw:.4f} |"
    )
    print(row)
    if not OUT.exists():
        OUT.write_text(HEADER, encoding="utf-8")
    with OUT.open("a", encoding="utf-8") as page:
        page.write(row + "\n")


HEADER = f"""# Commands from event producers: handled end to end vs a raw consume

Command: `uv run --frozen --no-sync python -m bench.bench_commands` ({platform.machine()}, two
shared cores). One tasks process; `task.create.v1` commands sent with client/producer.py, each
handled (validated, policy and user checked, the task created once with its answer in the same
outbox) and answered on the producer's answers topic; time from the first send to the last
answer. The baseline reads the same records off the command topic with a bare aiokafka
consumer assigned every partition (from its start, metadata included), same broker, same run.
Each row is one run (rows are appended).

| run | commands | handled end to end | raw aiokafka consume | ratio |
|---|---|---|---|---|
"""


if __name__ == "__main__":
    asyncio.run(main())
