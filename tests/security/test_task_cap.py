"""Issue 12 item 4: a per-user cap on stored tasks, with no database scan per create.

Before: any account could store tasks without limit (36,000 an hour, ~400 MB). Now a create past
the cap is a 409 problem+json of type task-quota-exceeded, and the count behind it is taken once
per `recount_every` creates (FerretDB scans the whole collection for every count).
"""

import uuid
from collections.abc import Iterator

import httpx
import pytest

from services.tasks.api import QUOTA_PROBLEM
from services.tasks.quota import TaskQuota, TaskQuotaExceededError
from tests.support.infra import free_port
from tests.support.processes import ServiceProcess
from tests.support.tasks import tasks_process
from tests.support.tokens import SigningKey

KEY = SigningKey.generate()
CAP, EVERY = 5, 2


class Counter:
    """A user's stored tasks as the store would count them, and how often it was asked."""

    def __init__(self) -> None:
        self.stored = 0
        self.counts = 0
        self.now = 0.0

    async def count(self, owner: str) -> int:
        self.counts += 1
        return self.stored


async def _fill(quota: TaskQuota, counter: Counter, attempts: int) -> int:
    """Create until refused (or `attempts` ran out); the number admitted."""
    admitted = 0
    for _ in range(attempts):
        try:
            await quota.admit("u")
        except TaskQuotaExceededError:
            break
        counter.stored += 1
        admitted += 1
    return admitted


async def test_the_cap_holds_with_one_count_per_hundred_creates() -> None:
    counter = Counter()
    quota = TaskQuota(
        counter.count, max_tasks=1000, recount_every=100, monotonic=lambda: counter.now
    )
    admitted = await _fill(quota, counter, 5000)
    assert admitted == 1000  # one process: the estimate is exact, no overshoot
    assert counter.counts <= 1000 // 100 + 1
    for _ in range(50):  # hammering at the cap costs no count until the recheck is due
        with pytest.raises(TaskQuotaExceededError):
            await quota.admit("u")
    assert counter.counts <= 1000 // 100 + 1


async def test_replicas_overshoot_by_at_most_recount_every_each_and_deletes_free_room() -> None:
    counter = Counter()
    replicas = [
        TaskQuota(counter.count, max_tasks=1000, recount_every=100, monotonic=lambda: counter.now)
        for _ in range(3)
    ]
    for _ in range(400):  # round-robin creates across three processes
        for quota in replicas:
            await _fill(quota, counter, 1)
    assert 1000 <= counter.stored <= 1000 + 3 * 100
    for quota in replicas:  # every process refuses once it has counted again
        with pytest.raises(TaskQuotaExceededError):
            await quota.admit("u")

    counter.stored = 10  # the user deleted almost everything
    with pytest.raises(TaskQuotaExceededError):
        await replicas[0].admit("u")  # still within the recheck interval
    counter.now += 10.0
    await replicas[0].admit("u")


@pytest.fixture(scope="module")
def service() -> Iterator[ServiceProcess]:
    env = {
        "TASKS_MAX_TASKS_PER_USER": str(CAP),
        "TASKS_QUOTA_RECOUNT_EVERY": str(EVERY),
        "TASKS_QUOTA_RECHECK_S": "0.1",
    }
    proc = tasks_process(f"tcap{free_port()}", KEY, **env).start()
    try:
        yield proc.wait_ready()
    finally:
        proc.stop()


@pytest.mark.e2e
async def test_a_create_past_the_cap_is_a_409_quota_problem_and_stores_nothing(
    service: ServiceProcess,
) -> None:
    token, _ = KEY.mint(f"user-{uuid.uuid4().hex[:8]}")
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=service.url, headers=headers, timeout=15) as api:
        codes = [
            (await api.post("/api/tasks", json={"title": f"t{n}"})).status_code
            for n in range(CAP + EVERY + 3)
        ]
        assert codes[:CAP] == [201] * CAP
        assert codes[-1] == 409
        refused = await api.post("/api/tasks", json={"title": "one more"})
        assert refused.status_code == 409
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["type"] == QUOTA_PROBLEM
        stats = (await api.get("/api/tasks/stats")).json()
        assert CAP <= stats["total"] <= CAP + EVERY

        spec = (await api.get("/openapi.json")).json()
        documented = spec["paths"]["/api/tasks"]["post"]["responses"]["409"]
        assert "application/problem+json" in documented["content"]
