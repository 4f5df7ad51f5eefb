"""Tasks service throughput and outbox lag, with and without write locks -> docs/bench-tasks.md.

Run: `uv run --frozen --no-sync python -m bench.bench_tasks` (about two minutes; needs the local
stack's Kafka and FerretDB). One tasks process at a time on the shared two cores, driven by httpx
from this process: compare the rows with each other, not with other machines.

"locks off" is NOT a safe configuration on FerretDB 1.24 (its updates are read-then-write, so
concurrent writes to one task are lost); it is measured only to price the lock documents.
"""

import asyncio
import os
import platform
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer
from pymongo import AsyncMongoClient

from common.events import TASKS_TOPIC, Envelope
from common.outbox import PENDING
from tests.support.infra import KAFKA_BOOTSTRAP, MONGO_URL
from tests.support.kafka_auth import client_options
from tests.support.tasks import tasks_process
from tests.support.tokens import SigningKey

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "bench-tasks.md"
CONCURRENCY = 8


async def _timed(n: int, call: Callable[[int], Awaitable[httpx.Response]]) -> dict[str, float]:
    latencies: list[float] = []
    refused: list[int] = []
    queue = iter(range(n))

    async def worker() -> None:
        for i in queue:
            started = time.perf_counter()
            response = await call(i)
            if response.is_success:
                latencies.append(time.perf_counter() - started)
            else:
                refused.append(response.status_code)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "rps": len(latencies) / elapsed,
        "refused": len(refused),
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p95_ms": 1000 * latencies[int(len(latencies) * 0.95)],
    }


async def _relay_lag(api: httpx.AsyncClient, topic: str, n: int) -> float:
    """Median ms from a create's 201 to its task.created.v1 being readable on Kafka."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=KAFKA_BOOTSTRAP,
        group_id=f"bench-{uuid.uuid4().hex}",
        **client_options(),
    )
    await consumer.start()
    arrived: dict[str, float] = {}
    try:
        await consumer.seek_to_end()
        acked: dict[str, float] = {}

        async def consume() -> None:
            while len(arrived) < n:
                batch = await consumer.getmany(timeout_ms=200)
                for records in batch.values():
                    for record in records:
                        event = Envelope.model_validate_json(record.value)
                        if event.type == "task.created.v1":
                            arrived[event.data["task"]["id"]] = time.perf_counter()

        reader = asyncio.create_task(consume())
        for i in range(n):
            response = await api.post("/api/tasks", json={"title": f"lag {i}"})
            acked[response.raise_for_status().json()["id"]] = time.perf_counter()
            await asyncio.sleep(0.02)  # spaced like independent users, not a burst
        await asyncio.wait_for(reader, 60)
        return statistics.median(1000 * (arrived[k] - acked[k]) for k in acked)
    finally:
        await consumer.stop()


async def _drained(prefix: str) -> None:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(MONGO_URL)
    try:
        tasks = client[f"{prefix}_tasks"]["tasks"]
        while await tasks.count_documents({PENDING: True}):  # noqa: ASYNC110 - another process
            await asyncio.sleep(0.2)
    finally:
        await client.close()


async def _measure(locks: bool) -> dict[str, Any]:
    key = SigningKey.generate()
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    proc = tasks_process(prefix, key, TASKS_WRITE_LOCKS=str(locks).lower()).start()
    try:
        await asyncio.to_thread(proc.wait_ready)
        token, _ = key.mint("bench-user")
        headers = {"Authorization": f"Bearer {token}"}
        limits = httpx.Limits(max_connections=CONCURRENCY)
        async with httpx.AsyncClient(
            base_url=proc.url, headers=headers, limits=limits, timeout=30
        ) as api:
            results: dict[str, Any] = {}
            results["create"] = await _timed(
                300, lambda i: api.post("/api/tasks", json={"title": f"t{i}", "tags": ["b"]})
            )
            await _drained(prefix)  # each row measures one thing, not the relay's backlog too
            first = (await api.get("/api/tasks", params={"limit": 1})).json()["items"][0]["id"]
            results["get"] = await _timed(300, lambda _: api.get(f"/api/tasks/{first}"))
            results["list 20 of 300"] = await _timed(
                100, lambda _: api.get("/api/tasks", params={"limit": 20, "status": "todo"})
            )
            results["patch one task (contended)"] = await _timed(
                100, lambda i: api.patch(f"/api/tasks/{first}", json={"title": f"v{i}"})
            )
            final = (await api.get(f"/api/tasks/{first}")).json()
            accepted = 100 - results["patch one task (contended)"]["refused"]
            results["lost_patches"] = accepted + 1 - final["version"]
            await _drained(prefix)
            results["relay_lag_ms"] = await _relay_lag(api, f"{prefix}.{TASKS_TOPIC}", 50)
            return results
    finally:
        proc.stop()


def _report(runs: dict[str, dict[str, Any]]) -> str:
    lines = [
        "# Tasks service: throughput, write locks, outbox lag",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.machine()}, "
        f"{CONCURRENCY} concurrent httpx clients against one tasks process on FerretDB 1.24 "
        "(SQLite) and Kafka, all on the same two shared cores "
        f"(load average {os.getloadavg()[0]:.1f} when the report was written: other work ran "
        "too, so compare rows of one run, not runs). "
        "Command: `uv run --frozen --no-sync python -m bench.bench_tasks`.",
        "",
        "| operation | locks | ok req/s | p50 ms | p95 ms | refused (503) |",
        "|---|---|---|---|---|---|",
    ]
    for mode, results in runs.items():
        for op, row in results.items():
            if isinstance(row, dict):
                lines.append(
                    f"| {op} | {mode} | {row['rps']:.0f} | {row['p50_ms']:.1f} | "
                    f"{row['p95_ms']:.1f} | {row['refused']} |"
                )
    lines += [
        "",
        "| locks | patches acknowledged yet lost (100 concurrent, one task) "
        "| median relay lag ms |",
    ]
    lines += ["|---|---|---|"]
    for mode, results in runs.items():
        lines.append(f"| {mode} | {results['lost_patches']} | {results['relay_lag_ms']:.1f} |")
    lines += [
        "",
        "Relay lag: from the 201 of a create to its `task.created.v1` being readable on Kafka "
        "(the write wakes the in-process relay; the poll interval only matters for other "
        'replicas\' writes). "Lost" patches were acknowledged with 200 yet overwritten: that '
        "is why locks are on by default; on MongoDB conditional updates are atomic by themselves.",
        "",
    ]
    return "\n".join(lines)


async def main() -> None:
    """Measure both modes and write the report."""
    runs = {"on": await _measure(True), "off": await _measure(False)}
    OUT.write_text(_report(runs))
    print(OUT.read_text())


if __name__ == "__main__":
    asyncio.run(main())
