"""FerretDB looks up `_id` by its `_id` index (deploy/local/ferretdb/*.patch); answers unchanged.

The patched binary (make install builds it) is compared with itself started with
`--test-disable-pushdown`, which hands every filter to Go over a full scan: the same documents, in
the same order, the same counts and the same writes, for every query shape the patch narrows (and
some it must leave alone), with `_id`s whose JSON encodings are unusual.
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from bson import ObjectId
from pymongo import MongoClient, ReturnDocument
from pymongo.collection import Collection

from tests.support.ferretdb import FERRETDB_BIN, FerretDB, patched_stamp, stamp

Doc = dict[str, Any]
OID = ObjectId("0123456789abcdef01234567")
# Escaped by Go's JSON encoder (<, >, &, U+2028, quotes, backslash, NUL), non-ASCII, empty, long,
# an ObjectId (stored as its hex string), and non-string ids the patch must not push down.
IDS: list[Any] = ["a<b>&c", "\u2028x", "é", 'q"b\\', "", " ", "id1", "id2", "id3", OID]
IDS += [7, 7.5, {"k": 1}, "x" * 300, "\x00z", "😀"]
NARROWED: list[Doc] = [{"_id": "id2"}, {"_id": OID, "t": 0}, {"_id": {"$eq": "é"}, "n": {"$gt": 0}}]
NARROWED += [{"_id": {"$in": ["id3", "id1"]}}, {"_id": {"$in": ["id1", OID], "$ne": "id1"}}]
SCANNED: list[Doc] = [{"t": 1}, {"_id": 7}, {"_id": {"$gt": "id1"}}]


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """The patched FerretDB with pushdown (as the stack runs it) and without (a full scan)."""
    if stamp(FERRETDB_BIN) != patched_stamp():
        pytest.fail(f"{FERRETDB_BIN} is not built from deploy/local/ferretdb/*.patch: make install")
    root = tmp_path_factory.mktemp("pushdown")
    pushed = FerretDB(root / "pushed").start()
    scanned = FerretDB(root / "scanned", flags=["--test-disable-pushdown"]).start()
    yield pushed.url, scanned.url
    pushed.kill()
    scanned.kill()


@contextmanager
def _fresh(url: str) -> Iterator[Collection[Doc]]:
    """The test collection, dropped and filled with one document per id."""
    client: MongoClient[Doc] = MongoClient(url, serverSelectionTimeoutMS=10_000)
    coll = client["pushdown"]["docs"]
    coll.drop()
    coll.insert_many([{"_id": i, "n": n, "t": n % 3} for n, i in enumerate(IDS)])
    try:
        yield coll
    finally:
        client.close()


def _filters() -> list[Doc]:
    filters: list[Doc] = []
    for i in IDS:
        filters += [{"_id": i}, {"_id": i, "t": 1}, {"_id": {"$eq": i}, "n": {"$gte": 3}}]
    return [
        *filters,
        {"_id": {"$in": IDS}},
        {"_id": {"$in": ["id3", "id1", "nope", "é"]}},
        {"_id": {"$in": ["id3", 7]}},
        {"_id": {"$in": ["id1", "id2"], "$nin": ["id2"]}},
        {"_id": {"$in": []}},
        {"_id": str(OID)},
        {"_id": {"$in": [str(OID), OID]}},
        {"_id": "id1", "$or": [{"t": 0}, {"t": 1}]},
        {"_id": {"k": 1}},
        {"_id": {"$gt": "id1"}},
    ]


def _reads(coll: Collection[Doc]) -> list[Any]:
    answers: list[Any] = []
    for f in _filters():
        answers.append(list(coll.find(f)))
        answers.append(coll.count_documents(f))
        answers.append(list(coll.aggregate([{"$match": f}])))
        answers.append(coll.distinct("t", f))
    return answers


BY_ID = ["id1", "id2", "é", "a<b>&c", "\u2028x", OID]
BY_ID_IN_INSERTION_ORDER = [i for i in IDS if i in BY_ID]


def _writes(coll: Collection[Doc]) -> list[Any]:
    u = [coll.update_one({"_id": "id1", "t": 2}, {"$set": {"u": 1}})]
    u.append(coll.update_one({"_id": "id1", "t": 0}, {"$set": {"u": 1}}))
    u.append(coll.update_many({"_id": {"$in": BY_ID}}, {"$inc": {"n": 100}}))
    u.append(coll.update_one({"_id": "new"}, {"$set": {"n": 1}}, upsert=True))
    after = coll.find_one_and_update(
        {"_id": "é"}, {"$set": {"z": 1}}, return_document=ReturnDocument.AFTER
    )
    gone = coll.delete_many({"_id": {"$in": ["id3", "😀", 'q"b\\', "x" * 300]}, "t": {"$ne": 5}})
    one = coll.delete_one({"_id": "\x00z"})
    counts = [(r.matched_count, r.modified_count, r.upserted_id) for r in u]
    return [counts, after, gone.deleted_count, one.deleted_count, list(coll.find())]


def _plan(coll: Collection[Doc], query: Doc) -> list[str]:
    explained = coll.database.command("explain", {"find": coll.name, "filter": query})
    return list(explained["queryPlanner"]["Plan"])


def test_lookups_by_id_use_the_id_index_and_other_filters_scan(servers: tuple[str, str]) -> None:
    with _fresh(servers[0]) as coll:
        for f in NARROWED:
            plan = _plan(coll, f)
            assert any("USING INDEX" in step and "__id_" in step for step in plan), (f, plan)
        for f in SCANNED:
            plan = _plan(coll, f)
            assert not any("INDEX" in step for step in plan), (f, plan)
            assert any("detail=SCAN " in step for step in plan), (f, plan)


def _both(
    servers: tuple[str, str], run: Callable[[Collection[Doc]], list[Any]]
) -> tuple[list[Any], list[Any]]:
    with _fresh(servers[0]) as pushed, _fresh(servers[1]) as scanned:
        return run(pushed), run(scanned)


def test_pushed_down_reads_answer_exactly_as_a_full_scan(servers: tuple[str, str]) -> None:
    pushed, scanned = _both(servers, _reads)
    assert pushed == scanned
    assert sum(1 for answer in pushed if answer) > len(pushed) // 2  # most filters match something


def test_writes_by_id_change_the_same_documents_as_a_full_scan(servers: tuple[str, str]) -> None:
    pushed, scanned = _both(servers, _writes)
    assert pushed == scanned
    counts, after, deleted, deleted_one, left = pushed
    assert counts == [(0, 0, None), (1, 1, None), (6, 6, None), (0, 0, "new")]
    assert after is not None
    assert (after["z"], after["n"]) == (1, 102)
    assert (deleted, deleted_one) == (4, 1)
    assert [d["_id"] for d in left if d["n"] >= 100] == BY_ID_IN_INSERTION_ORDER
