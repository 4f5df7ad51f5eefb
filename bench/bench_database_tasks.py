"""The tasks service's GET by id on a stock and a patched FerretDB (part of bench_database)."""

import statistics
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
from pymongo import MongoClient

from common.outbox import OUTBOX, PENDING
from tests.support.ferretdb import FerretDB
from tests.support.tasks import tasks_process
from tests.support.tokens import SigningKey

TASK_SIZES = (1_000, 10_000)
ROUNDS = 3
BUDGET_S = 1.0
Doc = dict[str, Any]


def _get_ms(api: httpx.Client, path: str) -> float:
    """Median ms of sequential GETs of `path` for BUDGET_S (at least one)."""
    latencies: list[float] = []
    deadline = time.perf_counter() + BUDGET_S
    while not latencies or time.perf_counter() < deadline:
        started = time.perf_counter()
        response = api.get(path)
        latencies.append(1000 * (time.perf_counter() - started))
        response.raise_for_status()
    return statistics.median(latencies)


def _fill(coll: Any, template: Doc, size: int) -> None:
    """Other users' tasks, copies of `template`, until the collection holds `size`."""
    missing = size - coll.estimated_document_count()
    for start in range(0, missing, 1000):
        batch = []
        for n in range(start, min(missing, start + 1000)):
            new = uuid.uuid4().hex
            doc = dict(template, _id=new, owner=f"other{n % 500}", idem=f"id:{new}")
            doc.update({OUTBOX: [], PENDING: False})
            batch.append(doc)
        coll.insert_many(batch)


# The tasks process as deployed (its periodic relay sweep, which also counts the backlog, and the
# reminder scan: on FerretDB both scan the collection, every 5 s and 30 s), and with both pushed
# out of the measurement.
VARIANTS = {
    "as deployed": {"TASKS_RELAY_INTERVAL_S": "5", "TASKS_REMINDER_INTERVAL_S": "30"},
    "periodic scans off": {"TASKS_RELAY_INTERVAL_S": "3600", "TASKS_BACKLOG_REFRESH_S": "3600"},
}
Samples = dict[str, dict[int, list[float]]]


def measure_tasks(
    paths: dict[str, Path], state: Path, log: Callable[[str], None]
) -> dict[str, Samples]:
    """Per variant, round medians of one user's GET /api/tasks/{id} per binary and size."""
    return {
        v: _measure(paths, state / str(n), env, log) for n, (v, env) in enumerate(VARIANTS.items())
    }


def _measure(
    paths: dict[str, Path], state: Path, env: dict[str, str], log: Callable[[str], None]
) -> Samples:
    key = SigningKey.generate()
    token, _ = key.mint("bench-user")
    samples: Samples = {name: {} for name in paths}
    with ExitStack() as stack:
        targets = []
        for name, binary in paths.items():
            db = FerretDB(state / name, binary=binary).start()
            stack.callback(db.kill)
            prefix = f"bdb{uuid.uuid4().hex[:8]}"
            proc = tasks_process(
                prefix, key, TASKBUS_MONGO_URL=db.url, TASKS_REMINDERS_ENABLED="false", **env
            ).start()
            stack.callback(proc.stop)
            proc.wait_ready()
            api = stack.enter_context(
                httpx.Client(base_url=proc.url, headers={"Authorization": f"Bearer {token}"})
            )
            task_id = api.post("/api/tasks", json={"title": "mine"}).raise_for_status().json()["id"]
            client: MongoClient[Doc] = stack.enter_context(MongoClient(db.url))
            coll = client[f"{prefix}_tasks"]["tasks"]
            template = coll.find_one({"_id": task_id})
            assert template is not None
            targets.append((name, api, coll, template))
        for size in TASK_SIZES:
            paths_ = []
            for _, api, coll, template in targets:
                _fill(coll, template, size - 1)
                # The newest task, last in the table: a scan that stops at the first match (a
                # find_one) reads the whole collection for it, as for a task anywhere but first.
                new = api.post("/api/tasks", json={"title": f"at {size}"}).raise_for_status()
                paths_.append(f"/api/tasks/{new.json()['id']}")
            for rnd in range(ROUNDS):
                for (name, api, _, _), path in zip(targets, paths_, strict=True):
                    ms = _get_ms(api, path)
                    samples[name].setdefault(size, []).append(ms)
                    log(f"{size:>6} round {rnd + 1} {name:>7} tasks GET by id: {ms:.2f} ms")
    return samples
