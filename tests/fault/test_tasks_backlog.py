"""Past the outbox backlog bound, tasks refuses writes with 503 + Retry-After and keeps serving
reads; once a relay drains the backlog, writes are accepted again and no event is lost."""

import httpx
import pytest

from common.events import TASKS_TOPIC
from tests.support.tasks import read_topic, tasks_process
from tests.support.tokens import SigningKey
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e
BOUND = 3


async def test_writes_are_refused_past_the_backlog_bound_until_the_relay_catches_up(
    prefix: str,
) -> None:
    key = SigningKey.generate()
    token, _ = key.mint("backlog-user")
    fast = {"TASKS_BACKLOG_MAX": str(BOUND), "TASKS_BACKLOG_REFRESH_S": "0.2"}
    # This replica does not publish: its events wait, as when the broker is unreachable.
    writer = tasks_process(prefix, key, TASKS_RELAY_ENABLED="false", **fast).start()
    relay = None
    acked: list[str] = []
    refused = 0
    try:
        writer.wait_ready()
        auth = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=writer.url, headers=auth, timeout=15) as api:

            async def write() -> bool:
                nonlocal refused
                response = await api.post("/api/tasks", json={"title": f"t{len(acked)}"})
                if response.status_code == 201:
                    acked.append(response.json()["id"])
                    return False
                assert response.status_code == 503, response.text
                assert response.headers["content-type"] == "application/problem+json"
                assert int(response.headers["retry-after"]) > 0
                refused += 1
                return True

            await eventually(write, within=20)
            assert len(acked) > BOUND
            assert (await api.get(f"/api/tasks/{acked[0]}")).status_code == 200

            relay = tasks_process(prefix, key).start()
            relay.wait_ready()

            async def accepted() -> bool:
                return not await write()

            await eventually(accepted, within=30)
        topic = f"{prefix}.{TASKS_TOPIC}"

        async def created_ids() -> set[str]:
            events = await read_topic(topic)
            return {e.data["task"]["id"] for e in events if e.type == "task.created.v1"}

        async def all_published() -> bool:
            return set(acked) <= await created_ids()

        await eventually(all_published, within=30)
        published = await created_ids()
        lost = [task_id for task_id in acked if task_id not in published]
        print(f"backlog: {len(acked)} acknowledged, {refused} refused with 503, {len(lost)} lost")
        assert refused >= 1
        assert lost == []
    finally:
        writer.stop()
        if relay is not None:
            relay.stop()
