"""Relay lag and a task GET against the collection's size, in one run -> docs/bench-relay.md.

Run: `uv run --frozen --no-sync python -m bench.bench_relay_lag` (a few minutes; needs the local
stack's Kafka and FerretDB). One tasks process with production relay settings; the collection is
topped up to each size in SIZES with other users' tasks (inserted directly, in the stored form
the service writes, storage.new_doc), then: the lag from a create's 201 to its task.created.v1
being readable on Kafka (LAG_CREATES creates, spaced like independent users), and the latency of
a GET of one task, sequentially. FerretDB 1.24 scans the collection for any query, so what grows
with the size is what still pays for everyone's data.
"""

import asyncio
import os
import platform
import statistics
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
from pymongo import AsyncMongoClient

from bench.bench_tasks import _relay_lag
from common.events import TASKS_TOPIC
from common.outbox import OUTBOX
from common.task_models import TaskCreate
from services.tasks.domain import new_task
from services.tasks.storage import new_doc, new_task_id
from tests.support.infra import MONGO_URL
from tests.support.tasks import tasks_process
from tests.support.tokens import SigningKey

SIZES = tuple(int(n) for n in os.environ.get("BENCH_SIZES", "1000,10000").split(","))
LAG_CREATES = 50
GETS = 50
FILL_BATCH = 1_000


async def _top_up(db_name: str, size: int) -> None:
    """Insert other users' tasks until the collection holds `size` documents."""
    async with AsyncMongoClient[dict[str, Any]](MONGO_URL) as client:
        tasks = client[db_name]["tasks"]
        missing = size - await tasks.count_documents({})
        now = datetime.now(UTC)
        while missing > 0:
            batch = []
            for n in range(min(missing, FILL_BATCH)):
                task = new_task(new_task_id(), f"filler{n % 100}", TaskCreate(title=f"f{n}"), now)
                batch.append(new_doc(task, idem_key=None, fingerprint="") | {OUTBOX: []})
            await tasks.insert_many(batch)
            missing -= len(batch)


async def _get_ms(api: httpx.AsyncClient, task_id: str) -> list[float]:
    """Milliseconds per sequential GET of one task."""
    took = []
    for _ in range(GETS):
        began = time.perf_counter()
        response = await api.get(f"/api/tasks/{task_id}")
        took.append(1000 * (time.perf_counter() - began))
        response.raise_for_status()
    return took


async def main() -> None:
    """Measure at each size, smallest first, in one process; print the rows."""
    key = SigningKey.generate()
    prefix = f"benchlag{uuid.uuid4().hex[:8]}"
    # Production intervals, not the tests' (a reminder scan every 0.5 s scans the collection).
    intervals = {"TASKS_RELAY_INTERVAL_S": "5.0", "TASKS_REMINDER_INTERVAL_S": "30"}
    proc = tasks_process(prefix, key, **intervals).start()
    rows: list[tuple[int, str, str]] = []
    try:
        await asyncio.to_thread(proc.wait_ready)
        token, _ = key.mint("bench-user")
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=proc.url, headers=headers, timeout=30) as api:
            for size in SIZES:
                await _top_up(f"{prefix}_tasks", size)
                try:
                    lag = await _relay_lag(api, f"{prefix}.{TASKS_TOPIC}", LAG_CREATES)
                    created = await api.post("/api/tasks", json={"title": f"read at {size}"})
                    gets = await _get_ms(api, created.raise_for_status().json()["id"])
                except httpx.HTTPStatusError as exc:  # reported: what this size costs
                    rows.append((size, f"failed: {exc.response.status_code}", ""))
                    break
                rows.append((size, f"{lag:.1f} ms", f"{statistics.median(gets):.1f} ms"))
    finally:
        proc.stop()
    print(
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.machine()}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print("| tasks in the collection | relay lag p50, 201 -> on Kafka | task GET p50 |")
    print("|---|---|---|")
    for size, lag_text, get_text in rows:
        print(f"| {size:,} | {lag_text} | {get_text} |")


if __name__ == "__main__":
    asyncio.run(main())
