"""Concurrent task writers for fault tests, and the accounting of what they were told and what
the tasks topic holds afterwards."""

import asyncio
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import httpx

from common.events import TASKS_TOPIC
from tests.support.infra import KAFKA_BOOTSTRAP
from tests.support.tasks import read_topic


@dataclass
class WriteLog:
    """What the writers were told: acknowledged ids (with when), refusals, transport errors."""

    acked: list[tuple[float, str]] = field(default_factory=list)  # (monotonic time, task id)
    refused: Counter[int] = field(default_factory=Counter)  # status -> count
    malformed: int = 0  # a 503 without problem+json or Retry-After
    errors: Counter[str] = field(default_factory=Counter)  # exception name -> count

    @property
    def ids(self) -> list[str]:
        """Every acknowledged task id."""
        return [task_id for _, task_id in self.acked]

    def acked_between(self, start: float, end: float) -> int:
        """How many writes were acknowledged in [start, end) (monotonic seconds)."""
        return sum(1 for at, _ in self.acked if start <= at < end)

    def record(self, response: httpx.Response) -> None:
        """Count one answer to a create."""
        if response.status_code == 201:
            self.acked.append((time.monotonic(), response.json()["id"]))
            return
        self.refused[response.status_code] += 1
        if response.status_code == 503 and not (
            response.headers.get("content-type") == "application/problem+json"
            and int(response.headers.get("retry-after", "0")) > 0
        ):
            self.malformed += 1


async def write_until(
    url: str,
    token: str,
    stop: asyncio.Event,
    log: WriteLog,
    *,
    writers: int = 4,
    every_s: float = 0.1,
) -> None:
    """`writers` concurrent clients create tasks, each at most one per `every_s`, until `stop`."""

    async def writer(n: int) -> None:
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=15) as api:
            while not stop.is_set():
                title = f"w{n}-{uuid.uuid4().hex[:8]}"
                try:
                    log.record(await api.post("/api/tasks", json={"title": title}))
                except httpx.TransportError as exc:
                    log.errors[type(exc).__name__] += 1
                # The offered load, not a wait on a condition: each writer paces itself.
                await asyncio.sleep(every_s)

    await asyncio.gather(*(writer(n) for n in range(writers)))


@dataclass
class Delivered:
    """The task.created.v1 records on the tasks topic, by task id."""

    event_ids: dict[str, list[str]]  # task id -> event id of every record (repeats included)

    def lost(self, acked: list[str]) -> list[str]:
        """Acknowledged creates with no event on the topic."""
        return [task_id for task_id in acked if task_id not in self.event_ids]

    @property
    def duplicates_delivered(self) -> int:
        """Records beyond the first for the same event id (a consumer dedupes them by id)."""
        return sum(len(ids) - len(set(ids)) for ids in self.event_ids.values())

    @property
    def duplicates_seen(self) -> int:
        """Tasks announced under two different event ids (no consumer could dedupe those)."""
        return sum(1 for ids in self.event_ids.values() if len(set(ids)) > 1)


async def delivered(prefix: str, bootstrap: str = KAFKA_BOOTSTRAP) -> Delivered:
    """Read the prefixed tasks topic from the start and index its created events."""
    found: dict[str, list[str]] = {}
    for event in await read_topic(f"{prefix}.{TASKS_TOPIC}", bootstrap):
        if event.type == "task.created.v1":
            found.setdefault(event.data["task"]["id"], []).append(event.id)
    return Delivered(found)
