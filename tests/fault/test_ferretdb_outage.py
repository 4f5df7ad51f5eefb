"""The tasks service's FerretDB SIGKILLed under four concurrent writers and kept down for 15 s,
then restarted on the same files.

Accounting asserted: every create is acknowledged (201) or refused with 503 problem+json and
Retry-After, never a 500 or a dropped connection; refusals happen during the outage; every
acknowledged task is in the database after the restart (lost == 0) and its task.created.v1 is on
the topic under one event id (duplicates seen == 0); duplicates delivered and the recovery time
(restart to the first acknowledged write) are reported.
"""

import asyncio
import time
from pathlib import Path

import pytest
from pymongo import MongoClient

from tests.support.ferretdb import FerretDB
from tests.support.tasks import tasks_process
from tests.support.tokens import SigningKey
from tests.support.waiting import eventually
from tests.support.writers import Delivered, WriteLog, delivered, write_until

pytestmark = pytest.mark.e2e
OUTAGE_S = 15.0
PHASE_WRITES = 20


def _stored(url: str, db: str) -> set[str]:
    client: MongoClient[dict[str, object]] = MongoClient(url, serverSelectionTimeoutMS=5000)
    try:
        return {str(doc["_id"]) for doc in client[db]["tasks"].find({}, {"_id": 1})}
    finally:
        client.close()


async def test_ferretdb_killed_for_15s_refuses_with_503_and_loses_nothing_acknowledged(
    prefix: str, tmp_path: Path
) -> None:
    db = FerretDB(tmp_path / "ferretdb").start()
    key = SigningKey.generate()
    token, _ = key.mint("ferretdb-kill-user")
    service = tasks_process(
        prefix, key, TASKBUS_MONGO_URL=db.url, TASKS_REMINDERS_ENABLED="false"
    ).start()
    try:
        await asyncio.to_thread(service.wait_ready)
        stop, log = asyncio.Event(), WriteLog()
        load = asyncio.create_task(write_until(service.url, token, stop, log))
        await eventually(lambda: len(log.acked) >= PHASE_WRITES, what="writes before the kill")
        db.kill()
        killed = time.monotonic()
        await asyncio.sleep(OUTAGE_S)  # the outage itself: the writers keep writing through it
        refused_during = log.refused[503]
        db.start()
        restarted = time.monotonic()
        await eventually(lambda: log.acked_between(restarted, float("inf")) >= PHASE_WRITES)
        recovery_s = min(at for at, _ in log.acked if at >= restarted) - restarted
        stop.set()
        await load
        stored = await asyncio.to_thread(_stored, db.url, f"{prefix}_tasks")

        async def published() -> Delivered | None:
            found = await delivered(prefix)
            return None if found.lost(log.ids) else found

        found = await eventually(published, 120, "every acknowledged create's event")
    finally:
        service.stop()
        db.kill()
    lost = [task_id for task_id in log.ids if task_id not in stored]
    print(
        f"ferretdb killed {restarted - killed:.1f}s: {len(log.acked)} acknowledged, "
        f"refused={dict(log.refused)} ({refused_during} during the outage), "
        f"errors={dict(log.errors)}, lost={len(lost)}, events lost={len(found.lost(log.ids))}, "
        f"duplicates delivered={found.duplicates_delivered}, seen={found.duplicates_seen}, "
        f"recovery={recovery_s:.2f}s"
    )
    assert set(log.refused) <= {503}, log.refused  # never a 500
    assert log.malformed == 0  # every 503 is problem+json with Retry-After
    assert dict(log.errors) == {}  # the connection stays up: every request gets an answer
    assert refused_during > 0
    assert lost == []
    assert found.duplicates_seen == 0
