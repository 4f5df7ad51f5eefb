"""FerretDB stock vs patched (deploy/local/ferretdb/*.patch): lookups by `_id` against data size.

Run: `make bench-database` (about ten minutes; builds the stock binary under var/ferretdb-stock
the first time; needs Kafka for the tasks service part) -> docs/bench-database.md.

Each binary runs as a private FerretDB (SQLite) on a free port with its own files, never the
shared one. Both hold the same documents; the collection grows 1k -> 10k -> 50k and at each size
every round measures both binaries one after the other (interleaved), each operation repeated
until BUDGET_S has passed (at least once). A cell is the median over rounds of each round's
median latency, with the spread of the round medians.
"""

import os
import platform
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pymongo import MongoClient
from pymongo.collection import Collection

from bench.bench_database_tasks import TASK_SIZES, Samples, measure_tasks
from tests.support.ferretdb import (
    BUILD,
    FERRETDB_BIN,
    FerretDB,
    ferretdb_version,
    patched_stamp,
    stamp,
)
from tests.support.infra import STATE_DIR

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "bench-database.md"
STOCK_BIN = STATE_DIR / "ferretdb-stock" / "bin" / "ferretdb"
SIZES = (1_000, 10_000, 50_000)
ROUNDS = 3
BUDGET_S = 1.0
Doc = dict[str, Any]


def binaries() -> dict[str, Path]:
    """The stock build (made here if missing) and the patched one make install builds."""
    version = ferretdb_version()
    if stamp(FERRETDB_BIN) != patched_stamp():
        raise SystemExit(f"{FERRETDB_BIN} is not built from the current patches: run make install")
    if stamp(STOCK_BIN) != f"{version} stock":
        subprocess.run([str(BUILD), "build", version, str(STOCK_BIN), "--stock"], check=True)
    return {"stock": STOCK_BIN, "patched": FERRETDB_BIN}


def task_doc(owner: str, n: int) -> Doc:
    """A document shaped like a stored task (about 400 bytes)."""
    now = datetime.now(UTC)
    return {
        "_id": uuid.uuid4().hex,
        "owner": owner,
        "title": f"task {n}",
        "seq": n,
        "description": "d" * 200,
        "status": "todo",
        "priority": n % 4,
        "tags": ["bench", f"t{n % 7}"],
        "created_at": now,
        "updated_at": now,
        "version": 1,
        "deleted": False,
    }


@dataclass
class Server:
    """One private FerretDB and the benchmark collection on it."""

    name: str
    coll: Collection[Doc]
    samples: dict[tuple[int, str], list[float]] = field(default_factory=dict)


@contextmanager
def servers(paths: dict[str, Path], state: Path) -> Iterator[list[Server]]:
    """Start each binary on a free port; stop them all at the end."""
    with ExitStack() as stack:
        started = []
        for name, binary in paths.items():
            db = FerretDB(state / name, binary=binary).start()
            stack.callback(db.kill)
            client: MongoClient[Doc] = MongoClient(db.url, serverSelectionTimeoutMS=10_000)
            stack.callback(client.close)
            started.append(Server(name, client["bench"]["tasks"]))
        yield started


def _timed(call: Callable[[], object]) -> float:
    """Median ms of `call` repeated until BUDGET_S has passed (at least once)."""
    latencies: list[float] = []
    deadline = time.perf_counter() + BUDGET_S
    while not latencies or time.perf_counter() < deadline:
        started = time.perf_counter()
        call()
        latencies.append(1000 * (time.perf_counter() - started))
    return statistics.median(latencies)


def operations(coll: Collection[Doc], ids: list[str]) -> dict[str, Callable[[], object]]:
    """The measured operations, each checking that it did what it says."""
    spread = iter(
        i * 7919 % len(ids) for i in range(10**9)
    )  # every size's documents, not a hot few
    picks = (ids[n] for n in spread)

    def find_one() -> None:
        assert coll.find_one({"_id": next(picks)}) is not None

    def update_one() -> None:
        where = {"_id": next(picks), "deleted": False}  # another condition, evaluated in Go
        update = {"$set": {"title": "renamed"}, "$inc": {"version": 1}}
        assert coll.update_one(where, update).modified_count == 1

    def update_many() -> None:
        batch = [next(picks) for _ in range(100)]
        result = coll.update_many({"_id": {"$in": batch}}, {"$inc": {"version": 1}})
        assert result.modified_count == len(set(batch))

    def find_by_seq() -> None:
        assert coll.find_one({"seq": next(spread)}) is not None

    return {
        "`find_one({_id})`": find_one,
        "`update_one({_id, deleted: false})`": update_one,
        "`update_many({_id: {$in: 100 ids}})`": update_many,
        "`find_one({seq})` (no index: a scan on both)": find_by_seq,
    }


def measure(servers_: list[Server], log: Callable[[str], None]) -> None:
    """Grow every server's collection through SIZES and time the operations at each size."""
    ids: list[str] = []
    for size in SIZES:
        docs = [task_doc(f"owner{n % 100}", n) for n in range(len(ids), size)]
        ids += [d["_id"] for d in docs]
        for server in servers_:
            for start in range(0, len(docs), 1000):
                server.coll.insert_many([dict(d) for d in docs[start : start + 1000]])
        for rnd in range(ROUNDS):
            for server in servers_:
                for op, call in operations(server.coll, ids).items():
                    ms = _timed(call)
                    server.samples.setdefault((size, op), []).append(ms)
                    log(f"{size:>6} round {rnd + 1} {server.name:>7} {op}: {ms:.2f} ms")


def _cell(samples: list[float]) -> str:
    return f"{statistics.median(samples):.2f} ({min(samples):.2f}-{max(samples):.2f})"


def report(servers_: list[Server], tasks: dict[str, Samples]) -> str:
    """The markdown page."""
    stock, patched = servers_
    version = ferretdb_version()
    lines = [
        "# Database: FerretDB lookups by `_id`, stock vs patched",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.machine()} "
        f"({os.cpu_count()} cores shared with other work; load average "
        f"{os.getloadavg()[0]:.1f} at the end), FerretDB {version} SQLite backend, pymongo, "
        "one client, one operation at a time. Command: `make bench-database`. Binaries: "
        f"stock `{stamp(STOCK_BIN)}`, patched `{stamp(FERRETDB_BIN)}` "
        "(`deploy/local/ferretdb/*.patch`, applied by `deploy/local/install.sh`).",
        "",
        f"ms per operation: median over {ROUNDS} interleaved rounds of each round's median "
        "(min-max of the round medians); documents shaped like tasks (~400 bytes), string ids "
        "picked across the whole collection (stock's scan stops at a `find_one`'s first match, "
        "so its cost is the document's position in the table).",
        "",
        "| operation | documents | stock ms | patched ms | stock / patched |",
        "|---|---|---|---|---|",
    ]
    for (size, op), samples in stock.samples.items():
        other = patched.samples[(size, op)]
        ratio = statistics.median(samples) / statistics.median(other)
        lines.append(f"| {op} | {size:,} | {_cell(samples)} | {_cell(other)} | {ratio:.1f}x |")
    if tasks:
        lines += [
            "",
            "Tasks service, `GET /api/tasks/{id}` of the user's newest task (httpx, one at a "
            "time; the collection filled with other users' tasks), ms as above. As deployed, "
            "the process also counts its outbox backlog every 2 s and sweeps it every 5 s, each "
            "a `find({outbox_pending: true})`: a scan on either binary, which loads the shared "
            "cores as the collection grows; the second row turns both off:",
            "",
            "| tasks in the collection | tasks process | stock ms | patched ms |",
            "|---|---|---|---|",
        ]
        for variant, by_binary in tasks.items():
            for size in TASK_SIZES:
                stock_ms, patched_ms = (_cell(by_binary[b][size]) for b in ("stock", "patched"))
                lines.append(f"| {size:,} | {variant} | {stock_ms} | {patched_ms} |")
    lines += ["", *WHY, ""]
    return "\n".join(lines)


WHY = [
    "Why stock scans: its SQLite backend wrote the `_id` path as `_ferretdb_sjson->'$._id'` "
    'while the unique `_id` index is on `_ferretdb_sjson->"_id"`; SQLite uses an expression '
    "index only for the same expression, so every `WHERE _id = ?` (the find pushdown, and the "
    "per-document `UPDATE ... WHERE` of every update) read the whole table (FerretDB issue "
    "#4646). Its pushdown also covered only a filter that was exactly `{_id: <string|ObjectId>}`. "
    "The patch spells the path like the index and narrows any filter with a top-level `_id` "
    "equality, `$eq` or `$in` of strings/ObjectIds; the rest of the filter is still applied in "
    "Go, so answers are unchanged (`tests/integration/test_ferretdb_pushdown.py` compares them "
    "with a full scan). No flag did this: `--test-disable-pushdown` only removes pushdown and "
    "`--test-enable-nested-pushdown` only concerns dotted keys.",
]


def main() -> None:
    """Measure both binaries and write the report."""
    paths = binaries()
    with tempfile.TemporaryDirectory(prefix="bench-database-") as state:
        with servers(paths, Path(state)) as started:
            measure(started, print)
        OUT.write_text(report(started, {}))  # kept should the tasks part fail (it needs Kafka)
        tasks = measure_tasks(paths, Path(state) / "tasks", print)
    OUT.write_text(report(started, tasks))
    print(OUT.read_text())


if __name__ == "__main__":
    main()
