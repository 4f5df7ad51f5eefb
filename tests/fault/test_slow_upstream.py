"""A slow upstream: a latency-injecting TCP proxy between the gateway and a real tasks process
holds the answers to one user's requests 2 s, then 6 s (past the gateway's 5 s tasks deadline);
the tasks service has done the work, only its answer is late.

Accounting asserted: at 2 s the write is served (201), slowly; at 6 s the gateway answers 504
problem+json at its deadline (+1 s of scheduling), never hangs; meanwhile another user's reads
through the same gateway and pool are all 200 and prompt; the timed-out create retried with the same
Idempotency-Key once the upstream is fast again is a replay of the task the timed-out attempt
created: exactly one task for that key (duplicates == 0, lost == 0).
"""

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from pymongo import MongoClient

from tests.support.gateway import gateway_client, gateway_settings
from tests.support.infra import MONGO_URL
from tests.support.processes import ServiceProcess
from tests.support.slow_proxy import SlowProxy
from tests.support.tasks import tasks_process
from tests.support.tokens import SigningKey

pytestmark = pytest.mark.e2e
DEADLINE_S = 5.0  # GatewaySettings.tasks_timeout_s
PROMPT_S = 1.0  # the other user's reads, on two shared cores


@pytest.fixture
async def tasks(prefix: str) -> AsyncIterator[tuple[ServiceProcess, SigningKey]]:
    key = SigningKey.generate()
    service = tasks_process(prefix, key, TASKS_REMINDERS_ENABLED="false").start()
    try:
        await asyncio.to_thread(service.wait_ready)
        yield service, key
    finally:
        service.stop()


def _count_key(db: str, idem: str) -> int:
    client: MongoClient[dict[str, object]] = MongoClient(MONGO_URL, serverSelectionTimeoutMS=5000)
    try:
        return client[db]["tasks"].count_documents({"idem": f"k:{idem}"})
    finally:
        client.close()


async def test_slow_tasks_upstream_is_a_prompt_504_and_harms_no_retry_or_other_user(
    prefix: str, tasks: tuple[ServiceProcess, SigningKey]
) -> None:
    service, key = tasks
    slow_token, _ = key.mint("slow-user")
    other_token, _ = key.mint("other-user")
    slow = {"Authorization": f"Bearer {slow_token}"}
    other = {"Authorization": f"Bearer {other_token}"}
    proxy = await SlowProxy(service.port, match=slow_token.encode()).start()
    settings = gateway_settings(prefix, key, proxy.url, tasks_timeout_s=DEADLINE_S)
    try:
        async with gateway_client(settings) as api:
            api.timeout = DEADLINE_S * 3  # the client would wait; the gateway must not
            assert (
                await api.post("/api/tasks", json={"title": "o"}, headers=other)
            ).status_code == 201

            proxy.delay_s = 2.0
            started = time.monotonic()
            reply = await api.post("/api/tasks", json={"title": "s2"}, headers=slow)
            slow_2s = time.monotonic() - started
            assert reply.status_code == 201, reply.text
            assert slow_2s >= 2.0

            proxy.delay_s = 6.0
            idem = uuid.uuid4().hex
            attempt = asyncio.create_task(
                api.post(
                    "/api/tasks", json={"title": "s6"}, headers={**slow, "Idempotency-Key": idem}
                )
            )
            started = time.monotonic()
            others: list[tuple[int, float]] = []
            while not attempt.done():  # the other user reads while the slow request is held
                began = time.monotonic()
                read = await api.get("/api/tasks?limit=5", headers=other)
                others.append((read.status_code, time.monotonic() - began))
                await asyncio.sleep(0.2)  # a person's pace, inside the gateway's rate limit
            timed_out = await attempt
            slow_6s = time.monotonic() - started

            proxy.delay_s = 0.0
            retry = await api.post(
                "/api/tasks", json={"title": "s6"}, headers={**slow, "Idempotency-Key": idem}
            )
            tasks_for_key = await asyncio.to_thread(_count_key, f"{prefix}_tasks", idem)
    finally:
        await proxy.stop()
    worst = max(took for _, took in others)
    print(
        f"slow upstream: 2 s delay served in {slow_2s:.2f}s; 6 s delay answered "
        f"{timed_out.status_code} in {slow_6s:.2f}s; other user {len(others)} reads, statuses "
        f"{sorted({s for s, _ in others})}, slowest {worst:.2f}s; retry {retry.status_code} "
        f"(replayed={retry.headers.get('idempotent-replayed')}), "
        f"tasks for the key={tasks_for_key}, chunks held={proxy.held}"
    )
    assert timed_out.status_code == 504, timed_out.text
    assert timed_out.headers["content-type"] == "application/problem+json"
    assert slow_6s < DEADLINE_S + 1.0  # the deadline plus scheduling on two shared cores
    assert {status for status, _ in others} == {200}
    assert worst < PROMPT_S
    assert retry.status_code == 201, retry.text
    assert retry.headers.get("idempotent-replayed") == "true"
    assert tasks_for_key == 1
