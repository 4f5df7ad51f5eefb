"""The command handler on the real database: each command has one effect and one answer.

The records are handed to the handler directly (the Kafka side is in tests/e2e/test_commands.py),
so a redelivery is simply the same record handled again.
"""

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka.structs import ConsumerRecord
from pymongo import AsyncMongoClient

from common.clock import utcnow
from common.commands import (
    COMPLETE,
    CREATE,
    UPDATE,
    Command,
    CompleteTask,
    CreateTask,
    Notice,
    Policies,
    SendNotification,
    UpdateTask,
)
from common.events import Envelope
from common.outbox import OUTBOX, PENDING
from common.task_models import TaskCreate, TaskPatch
from services.tasks.commands import CommandHandler
from services.tasks.ledger import CommandLedger, UserDirectory
from services.tasks.settings import TasksSettings
from services.tasks.storage import TaskStore
from tests.support.infra import MONGO_URL

pytestmark = pytest.mark.integration
Client = AsyncMongoClient[dict[str, Any]]
TOPIC = "p.taskbus.commands.crm"


@pytest.fixture
async def handler(prefix: str, tmp_path: Path) -> AsyncIterator[CommandHandler]:
    client: Client = AsyncMongoClient(MONGO_URL, tz_aware=True)
    db = client[f"{prefix}_tasks"]
    store = TaskStore(db, locks=True, lock_wait_s=10, outbox_max=500)
    await store.ensure_indexes()
    users = UserDirectory(db)
    await users.add(["u1"])
    policies = tmp_path / "producers.json"
    policies.write_text(json.dumps({"crm": {"types": [CREATE, UPDATE, COMPLETE], "users": "*"}}))
    try:
        yield CommandHandler(
            store,
            CommandLedger(db),
            users,
            Policies(policies),
            TasksSettings(topic_prefix="p."),
            tasks_written=lambda _, outbox=None: None,
            ledger_written=lambda _: None,
        )
    finally:
        await client.drop_database(f"{prefix}_tasks")
        await client.close()


def _record(envelope: Envelope | bytes, offset: int, key: bytes = b"u1") -> Any:
    value = envelope if isinstance(envelope, bytes) else envelope.model_dump_json().encode()
    return ConsumerRecord(TOPIC, 0, offset, 0, 0, key, value, None, len(key), len(value), ())


def _command(data: Command, user: str = "u1") -> Envelope:
    return Envelope(
        id=str(uuid.uuid4()),
        source="/producers/crm",
        type=data.command_type,
        time=utcnow(),
        subject=user,
        data=data.model_dump(mode="json", exclude_unset=True),
    )


async def _docs(handler: CommandHandler, collection: str) -> list[dict[str, Any]]:
    coll = handler.store.tasks if collection == "tasks" else handler.ledger.collection
    return [doc async for doc in coll.find({})]


async def test_a_create_handled_again_or_resent_makes_one_task_with_both_events(
    handler: CommandHandler,
) -> None:
    create = _command(CreateTask(task=TaskCreate(title="once")))
    outcomes = [await handler.handle(_record(create, n)) for n in (0, 0, 7)]
    assert outcomes == ["created", "replayed", "replayed"]
    [doc] = await _docs(handler, "tasks")
    assert [e["topic"] for e in doc[OUTBOX]] == ["taskbus.tasks", "taskbus.answers.crm"]
    assert {e["event"]["causationid"] for e in doc[OUTBOX]} == {create.id}
    assert {e["event"]["type"] for e in doc[OUTBOX]} == {"task.created.v1"}


async def test_an_update_redelivered_after_a_later_one_does_not_undo_it(
    handler: CommandHandler,
) -> None:
    await handler.handle(_record(_command(CreateTask(task=TaskCreate(title="t"))), 0))
    [doc] = await _docs(handler, "tasks")
    first = _command(UpdateTask(task_id=doc["_id"], changes=TaskPatch(title="first")))
    second = _command(UpdateTask(task_id=doc["_id"], changes=TaskPatch(title="second")))
    assert await handler.handle(_record(first, 1)) == "changed"
    assert await handler.handle(_record(second, 2)) == "changed"
    assert await handler.handle(_record(first, 1)) == "replayed"  # redelivered
    [doc] = await _docs(handler, "tasks")
    assert (doc["title"], doc["version"]) == ("second", 3)
    answers = [e["event"] for e in doc[OUTBOX] if e["topic"] == "taskbus.answers.crm"]
    assert [a["causationid"] for a in answers[1:]] == [first.id, second.id]


async def test_a_refused_command_is_answered_once_and_makes_nothing(
    handler: CommandHandler,
) -> None:
    nobody = _command(CreateTask(task=TaskCreate(title="x")), user="nobody")
    record = _record(nobody, 0, key=b"nobody")
    assert [await handler.handle(record) for _ in range(2)] == ["rejected", "seen"]
    garbage = _record(b"\x00 no json", 1)
    assert [await handler.handle(garbage) for _ in range(2)] == ["rejected", "rejected"]
    assert await _docs(handler, "tasks") == []
    ledger = await _docs(handler, "ledger")
    assert sorted(d["_id"] for d in ledger) == sorted([f"crm:{nobody.id}", "crm:@0:1"])
    problems = {d["_id"]: d[OUTBOX][0]["event"]["data"]["problem"] for d in ledger}
    assert problems[f"crm:{nobody.id}"]["type"].endswith("/unknown-user")
    assert problems["crm:@0:1"]["status"] == 400


async def test_completing_a_done_task_is_answered_from_the_ledger_without_an_event(
    handler: CommandHandler,
) -> None:
    await handler.handle(_record(_command(CreateTask(task=TaskCreate(title="t"))), 0))
    [doc] = await _docs(handler, "tasks")
    done = _command(CompleteTask(task_id=doc["_id"]))
    again = _command(CompleteTask(task_id=doc["_id"]))
    assert await handler.handle(_record(done, 1)) == "changed"
    assert [await handler.handle(_record(again, 2)) for _ in range(2)] == ["unchanged", "seen"]
    [doc] = await _docs(handler, "tasks")
    assert doc["status"] == "done"
    assert [e["event"]["type"] for e in doc[OUTBOX]].count("task.completed.v1") == 2  # tasks+answer
    [answered] = await _docs(handler, "ledger")
    assert answered[OUTBOX][0]["event"]["type"] == "task.completed.v1"
    assert answered[OUTBOX][0]["event"]["causationid"] == again.id


async def test_a_notification_command_is_left_to_the_notifier(handler: CommandHandler) -> None:
    params = Notice(subject="s", message="m")
    send = _command(SendNotification(template="notice", params=params))
    assert await handler.handle(_record(send, 0)) == "notifier's"
    assert await _docs(handler, "tasks") == []
    assert await _docs(handler, "ledger") == []


async def test_the_ledger_forgets_old_answered_commands_but_not_unpublished_ones(
    handler: CommandHandler,
) -> None:
    for n, user in enumerate(("nobody", "nobody-else")):
        envelope = _command(CreateTask(task=TaskCreate(title="x")), user=user)
        await handler.handle(_record(envelope, n, key=user.encode()))
    published, waiting = await _docs(handler, "ledger")
    await handler.ledger.collection.update_one(
        {"_id": published["_id"]}, {"$set": {PENDING: False, OUTBOX: []}}
    )
    assert await handler.ledger.prune(published["at"]) == 0  # not older than that
    assert await handler.ledger.prune(utcnow()) == 1
    assert [d["_id"] for d in await _docs(handler, "ledger")] == [waiting["_id"]]


async def test_a_user_not_read_yet_is_waited_for_until_the_feed_passes_the_command(
    handler: CommandHandler,
) -> None:
    users = handler.users
    await users.caught_up(1_000)
    waiting = asyncio.create_task(users.known_by("late", at_ms=2_000, within_s=30))
    await asyncio.sleep(0)  # it is waiting now, on the condition
    await users.add(["late"])
    await users.caught_up(2_000)
    assert await waiting
    # Read past the command and still absent: unknown, at once.
    assert not await users.known_by("never", at_ms=2_000, within_s=30)
