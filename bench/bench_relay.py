"""Outbox relay throughput against the tasks service's write rate in one run -> docs/bench-relay.md.

Run: `uv run --frozen --no-sync python -m bench.bench_relay` (under a minute; needs the local
stack's Kafka and FerretDB). One tasks process with production settings; WRITERS httpx clients
POST creates for SECONDS; every create queues one task.created.v1. The relay's rate is the events
counted by `taskbus_tasks_outbox_published_total` over the time from the first write until all of
them were published (the backlog is 0), so a relay that lags behind the writes pays for it. The
time until every outbox was also cleared (no document marked) is reported beside it: clearing
runs behind publication (common.relay_clear) at the database's rewrite rate, measured last.
"""

import asyncio
import os
import platform
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from pymongo import AsyncMongoClient

from tests.support.infra import MONGO_URL
from tests.support.tasks import tasks_process
from tests.support.tokens import SigningKey

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "bench-relay.md"
WRITERS = 8
SECONDS = 15.0
DRAIN_LIMIT_S = 300.0
METRIC = "taskbus_tasks_outbox_published_total"


async def _published(api: httpx.AsyncClient) -> int:
    """The relay's published-events counter, summed over event types."""
    text = (await api.get("/metrics")).text
    rows = (line.split()[-1] for line in text.splitlines() if line.startswith(METRIC + "{"))
    return int(sum(float(value) for value in rows))


async def _write(api: httpx.AsyncClient, until: float) -> tuple[int, int]:
    """Creates POSTed until `until`: (accepted, refused)."""
    accepted = refused = 0
    while time.perf_counter() < until:
        response = await api.post("/api/tasks", json={"title": f"r{accepted}", "tags": ["b"]})
        if response.status_code == 201:
            accepted += 1
        else:
            refused += 1
    return accepted, refused


async def _database_rewrites_per_s(db_name: str) -> float:
    """The database's own limit here: documents one raw `update_many` rewrites per second.

    Measured on the collection the run just filled (its size sets FerretDB's cost per rewrite),
    100 documents per call, best of 3; the relay must rewrite each published document once.
    """
    async with AsyncMongoClient[dict[str, Any]](MONGO_URL) as client:
        tasks = client[db_name]["tasks"]
        ids = [doc["_id"] async for doc in tasks.find({}, {"_id": 1}).limit(100)]
        best = float("inf")
        for n in range(3):
            began = time.perf_counter()
            await tasks.update_many({"_id": {"$in": ids}}, {"$set": {"bench_touch": n}})
            best = min(best, time.perf_counter() - began)
        return len(ids) / best


async def _cleared_s(db_name: str, started: float) -> float:
    """Seconds from `started` until no task is marked as holding unpublished or uncleared events."""
    async with AsyncMongoClient[dict[str, Any]](MONGO_URL) as client:
        tasks = client[db_name]["tasks"]
        while await tasks.count_documents({"outbox_pending": True}, limit=1):
            if time.perf_counter() - started > DRAIN_LIMIT_S:
                break
            await asyncio.sleep(0.2)  # another process clears: no event to await
    return time.perf_counter() - started


async def _measure() -> dict[str, float]:
    key = SigningKey.generate()
    prefix = f"benchrelay{uuid.uuid4().hex[:8]}"
    # The production poll interval, not the tests' 0.2 s: writes wake the relay by themselves.
    proc = tasks_process(prefix, key, TASKS_RELAY_INTERVAL_S="5.0").start()
    try:
        await asyncio.to_thread(proc.wait_ready)
        token, _ = key.mint("bench-user")
        headers = {"Authorization": f"Bearer {token}"}
        limits = httpx.Limits(max_connections=WRITERS + 1)
        async with httpx.AsyncClient(
            base_url=proc.url, headers=headers, limits=limits, timeout=30
        ) as api:
            started = time.perf_counter()
            counts = await asyncio.gather(*(_write(api, started + SECONDS) for _ in range(WRITERS)))
            wrote_s = time.perf_counter() - started
            accepted = sum(a for a, _ in counts)
            during = await _published(api)
            published = during
            while published < accepted and time.perf_counter() - started < DRAIN_LIMIT_S:
                await asyncio.sleep(0.1)  # polling another process's counter: no event to await
                published = await _published(api)
            drained_s = time.perf_counter() - started
        cleared_s = await _cleared_s(f"{prefix}_tasks", started)
        rewrites_per_s = await _database_rewrites_per_s(f"{prefix}_tasks")
        return {
            "rewrites_per_s": rewrites_per_s,
            "accepted": accepted,
            "refused": sum(r for _, r in counts),
            "write_s": wrote_s,
            "creates_per_s": accepted / wrote_s,
            "published": published,
            "published_during": during,
            "drained_s": drained_s,
            "cleared_s": cleared_s,
            "events_per_s": published / drained_s,
        }
    finally:
        proc.stop()


async def _measure_cold() -> dict[str, float]:
    """The relay's own rate, writers aside: a backlog left by a process without a relay, published
    by a fresh process's sweeps (no writer names a document: the crash and other-replica path)."""
    key = SigningKey.generate()
    prefix = f"benchrelay{uuid.uuid4().hex[:8]}"
    token, _ = key.mint("bench-user")
    headers = {"Authorization": f"Bearer {token}"}
    writer = tasks_process(prefix, key, TASKS_RELAY_ENABLED="false").start()
    try:
        await asyncio.to_thread(writer.wait_ready)
        async with httpx.AsyncClient(base_url=writer.url, headers=headers, timeout=30) as api:
            until = time.perf_counter() + SECONDS
            counts = await asyncio.gather(*(_write(api, until) for _ in range(WRITERS)))
    finally:
        writer.stop()
    backlog = sum(a for a, _ in counts)
    relay = tasks_process(prefix, key, TASKS_RELAY_INTERVAL_S="5.0").start()
    try:
        await asyncio.to_thread(relay.wait_ready)
        started = time.perf_counter()
        async with httpx.AsyncClient(base_url=relay.url, timeout=30) as api:
            published = 0
            while published < backlog and time.perf_counter() - started < DRAIN_LIMIT_S:
                await asyncio.sleep(0.1)  # polling another process's counter: no event to await
                published = await _published(api)
        published_s = time.perf_counter() - started
        cleared_s = await _cleared_s(f"{prefix}_tasks", started)
    finally:
        relay.stop()
    return {"backlog": backlog, "published_s": published_s, "cleared_s": cleared_s}


def _report(label: str, row: dict[str, float]) -> str:
    ratio = row["events_per_s"] / row["creates_per_s"]
    return (
        f"| {label} | {WRITERS} | {row['accepted']:.0f} ({row['refused']:.0f} refused) "
        f"| {row['creates_per_s']:.1f} | {row['published_during']:.0f} "
        f"| {row['published']:.0f} in {row['drained_s']:.1f} s "
        f"| {row['cleared_s']:.1f} s | {row['events_per_s']:.1f} "
        f"| {ratio:.2f} | {row['rewrites_per_s']:.0f} "
        f"| {row['events_per_s'] / row['rewrites_per_s']:.2f} |"
    )


async def main() -> None:
    """Measure the relay; print the row."""
    label = sys.argv[1] if len(sys.argv) > 1 else "publish, then clear behind"
    rows = [(label, await _measure())]
    print(
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.machine()}, "
        f"load average {os.getloadavg()[0]:.1f}, {SECONDS:.0f} s of writes"
    )
    print(
        "| relay | writers | creates accepted | creates/s | published while writing "
        "| published until backlog 0 | all cleared after | events/s | events/s ÷ creates/s "
        "| database rewrites/s | events/s ÷ rewrites/s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, row in rows:
        print(_report(name, row))
    cold = await _measure_cold()
    print()
    print(
        "| backlog left by a process without relay | published by a fresh process in "
        "| events/s | ÷ creates/s above | all cleared after |"
    )
    print("|---|---|---|---|---|")
    rate = cold["backlog"] / cold["published_s"]
    print(
        f"| {cold['backlog']:.0f} events | {cold['published_s']:.1f} s | {rate:.1f} "
        f"| {rate / rows[0][1]['creates_per_s']:.2f} | {cold['cleared_s']:.1f} s |"
    )


if __name__ == "__main__":
    asyncio.run(main())
