"""The real parts work as the design needs: Kafka across processes, FerretDB with unique indexes."""

import asyncio
import sys
import textwrap

import pytest
from pymongo import AsyncMongoClient
from pymongo.errors import DuplicateKeyError

from common.events import TASKS_TOPIC, Envelope
from tests.support.infra import KAFKA_BOOTSTRAP, MONGO_URL, ROOT
from tests.support.kafka import collect_events

pytestmark = pytest.mark.integration

_PUBLISHER = textwrap.dedent(
    """
    import asyncio, sys
    from common.events import TASKS_TOPIC, TaskDeleted, new_event
    from common.infra import open_broker
    from common.kafka import publish
    from common.settings import ServiceSettings

    async def main() -> None:
        settings = ServiceSettings(kafka_bootstrap=sys.argv[1], topic_prefix=sys.argv[2],
                                   service_name="publisher")
        async with open_broker(settings, [TASKS_TOPIC]) as broker:
            for i in range(3):
                event = new_event(TaskDeleted(task_id=f"task-{i}", owner="u1"),
                                  source="/test", subject="u1")
                await publish(broker, settings, TASKS_TOPIC, event)
                print(event.id, flush=True)

    asyncio.run(main())
    """
)


async def test_event_published_by_one_process_is_consumed_by_another(prefix: str) -> None:
    publisher = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _PUBLISHER,
        KAFKA_BOOTSTRAP,
        f"{prefix}.",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(publisher.communicate(), 60)
    assert publisher.returncode == 0, stderr.decode()
    published_ids = stdout.decode().split()
    assert len(published_ids) == 3

    events = await collect_events(f"{prefix}.{TASKS_TOPIC}", lambda evs: len(evs) >= 3)

    assert [e.id for e in events] == published_ids  # same key -> one partition -> in order
    assert all(isinstance(e, Envelope) and e.type == "task.deleted.v1" for e in events)
    assert [e.payload().model_dump()["task_id"] for e in events] == ["task-0", "task-1", "task-2"]


async def test_ferretdb_reads_back_a_document_and_enforces_a_unique_index(prefix: str) -> None:
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(MONGO_URL)
    try:
        users = client[f"{prefix}_db"]["users"]
        await users.create_index("email", unique=True)
        await users.insert_one({"email": "ada@example.com", "name": "Ada"})

        with pytest.raises(DuplicateKeyError):
            await users.insert_one({"email": "ada@example.com", "name": "Impostor"})

        stored = await users.find({"email": "ada@example.com"}, {"_id": 0}).to_list()
        assert stored == [{"email": "ada@example.com", "name": "Ada"}]
    finally:
        await client.drop_database(f"{prefix}_db")
        await client.close()
