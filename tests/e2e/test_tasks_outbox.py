"""A tasks process killed between acknowledging writes and publishing them loses no event."""

from typing import Any

import httpx
import pytest
from pymongo import AsyncMongoClient

from common.events import TASKS_TOPIC
from common.outbox import PENDING
from tests.support.infra import MONGO_URL
from tests.support.tasks import read_topic, tasks_process
from tests.support.tokens import SigningKey
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e


async def test_sigkill_with_unpublished_outbox_entries_loses_nothing(prefix: str) -> None:
    key = SigningKey.generate()
    token, _ = key.mint("crash-user")
    auth = {"Authorization": f"Bearer {token}"}
    # This replica leaves publishing to others, so its acknowledged writes wait in the outbox.
    writer = tasks_process(
        prefix, key, TASKS_RELAY_ENABLED="false", TASKS_REMINDERS_ENABLED="false"
    ).start()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(MONGO_URL, tz_aware=True)
    tasks = client[f"{prefix}_tasks"]["tasks"]
    relay = None
    try:
        writer.wait_ready()
        async with httpx.AsyncClient(base_url=writer.url, headers=auth, timeout=15) as api:
            ids = [
                (await api.post("/api/tasks", json={"title": f"t{i}"})).json()["id"]
                for i in range(3)
            ]
            for task_id in ids:
                assert (
                    await api.patch(f"/api/tasks/{task_id}", json={"priority": "high"})
                ).status_code == 200
            assert (
                await api.patch(f"/api/tasks/{ids[0]}", json={"status": "done"})
            ).status_code == 200
            assert (await api.delete(f"/api/tasks/{ids[1]}")).status_code == 204
        written = {
            doc["_id"]: [entry["id"] for entry in doc["outbox"]]
            async for doc in tasks.find({"_id": {"$in": ids}})
        }
        assert [len(written[i]) for i in ids] == [3, 3, 2]
        topic = f"{prefix}.{TASKS_TOPIC}"
        assert await read_topic(topic) == []

        writer.kill()  # SIGKILL: no shutdown hook runs

        relay = tasks_process(prefix, key).start()
        relay.wait_ready()

        async def drained() -> bool:
            left = await tasks.count_documents({"$or": [{PENDING: True}, {"deleted": True}]})
            return left == 0

        await eventually(drained)
        events = await read_topic(topic)
        assert sorted(e.id for e in events) == sorted(
            i for entry_ids in written.values() for i in entry_ids
        )
        for entry_ids in written.values():
            mine = [e for e in events if e.id in entry_ids]
            assert [e.id for e in mine] == entry_ids  # same order as written
        assert [e.type for e in events if e.id in written[ids[0]]] == [
            "task.created.v1",
            "task.updated.v1",
            "task.completed.v1",
        ]
        assert [e.type for e in events if e.id in written[ids[1]]][-1] == "task.deleted.v1"
        assert await tasks.find_one({"_id": ids[1]}) is None  # tombstone gone once relayed
    finally:
        writer.kill()
        if relay is not None:
            relay.stop()
        await client.drop_database(f"{prefix}_tasks")
        await client.close()
