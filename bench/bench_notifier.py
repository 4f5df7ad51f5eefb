"""Notifier throughput: a burst of events until every mail is in the sink, 1 vs 2 replicas.

Run: `uv run --frozen --no-sync python -m bench.bench_notifier` (about a minute; needs Kafka and
FerretDB of the local stack). Each round gets its own topics, database and SMTP sink directory;
the clock runs from the first publish to the last `.eml` written. Writes docs/bench-notifier.md.
"""

import asyncio
import platform
import statistics
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx

from common.events import USERS_TOPIC, UserRegistered, new_event
from common.infra import open_broker
from common.kafka import publish
from services.notifier.settings import NotifierSettings
from tests.support.infra import KAFKA_BOOTSTRAP, ROOT, STATE_DIR, free_port, infra_env
from tests.support.metrics import metric_sum
from tests.support.processes import ServiceProcess

OUT = ROOT / "docs" / "bench-notifier.md"
EVENTS = 300
ROUNDS = 2


def start_sink(port: int, directory: Path) -> subprocess.Popen[bytes]:
    directory.mkdir(parents=True)
    cmd = [
        sys.executable,
        "-m",
        "deploy.local.mailsink",
        "--port",
        str(port),
        "--dir",
        str(directory),
    ]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def owned(proc: ServiceProcess, group: str) -> float:
    text = httpx.get(f"{proc.url}/metrics", timeout=5).text
    return metric_sum(text, "taskbus_notifier_assigned_partitions", group=group)


async def one_round(replicas: int) -> float:
    """Seconds from the first publish until all EVENTS mails are stored."""
    prefix = f"bn{uuid.uuid4().hex[:10]}"
    directory = STATE_DIR / "bench" / prefix / "mail"
    sink_port = free_port()
    sink = start_sink(sink_port, directory)
    procs = []
    for n in range(replicas):
        port = free_port()
        env = {
            **infra_env(prefix),
            "NOTIFIER_PORT": str(port),
            "NOTIFIER_SMTP_PORT": str(sink_port),
        }
        log = STATE_DIR / "log" / "bench" / f"{prefix}-{n}.log"
        procs.append(ServiceProcess("services.notifier", port, env, log).start())
    try:
        for proc in procs:
            proc.wait_ready()
        group = f"{prefix}.notifier.users"
        settings = NotifierSettings(kafka_bootstrap=KAFKA_BOOTSTRAP, topic_prefix=f"{prefix}.")
        everything = settings.kafka_partitions
        # Polling other processes' state (HTTP, files): nothing here to await instead.
        while sum(shares := [owned(p, group) for p in procs]) < everything or not all(shares):  # noqa: ASYNC110
            await asyncio.sleep(0.2)
        async with open_broker(settings, [USERS_TOPIC]) as broker:
            started = time.perf_counter()
            for n in range(EVENTS):
                user = uuid.uuid4().hex
                payload = UserRegistered(user_id=user, email=f"{prefix}-{n}@example.com", name="B")
                await publish(
                    broker, settings, USERS_TOPIC, new_event(payload, source="bench", subject=user)
                )
            while len(list(directory.glob("*.eml"))) < EVENTS:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            return time.perf_counter() - started
    finally:
        for proc in procs:
            proc.stop()
        sink.terminate()
        sink.wait()


async def main() -> None:
    """Measure, then write the table."""
    results: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(ROUNDS):
        for replicas, times in results.items():
            times.append(await one_round(replicas))
    rows = [
        f"| {r} | {EVENTS} | {statistics.median(s):.2f} | {EVENTS / statistics.median(s):.0f} |"
        for r, s in results.items()
    ]
    OUT.write_text(
        "# Notifier throughput\n\n"
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.machine()}, "
        f"{platform.python_version()}, with `python -m bench.bench_notifier` (median of {ROUNDS}). "
        "A burst of welcome events, one mail each, into a local SMTP sink; each mail is one claim "
        "insert, one recipient upsert, one SMTP session and one state update on FerretDB (SQLite). "
        "Shared two-core machine: read the ratio, not the absolute figure.\n\n"
        "| replicas | events | seconds (publish start to last mail) | mails/s |\n"
        "|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )
    sys.stdout.write(OUT.read_text())


if __name__ == "__main__":
    asyncio.run(main())
