"""Commands from event producers (issue 13): each has one effect, and every one gets an answer.

A real tasks process, real Kafka and FerretDB; commands are sent with the producer helper
(client/producer.py) and the answers read from the producer's answers topic.
"""

import json
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from pymongo import AsyncMongoClient

from client.producer import CommandProducer
from common.commands import CREATE, UPDATE, CreateTask
from common.events import (
    TASKS_TOPIC,
    Envelope,
    answers_topic,
    commands_topic,
)
from common.task_models import TaskCreate, TaskPatch
from tests.support.commands import announce_users
from tests.support.gateway import gateway_settings, serve_gateway
from tests.support.infra import KAFKA_BOOTSTRAP, MONGO_URL, ROOT
from tests.support.kafka import collect_events
from tests.support.kafka_auth import client_options
from tests.support.tasks import tasks_process
from tests.support.tokens import SigningKey
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e
USERS = [f"user-{n}" for n in range(10)]
QUOTA = 100  # tasks per user: above the 95 each user gets below
DISTINCT, RESENT = 950, 50  # the acceptance: 1,000 records, 50 of them re-sends


@pytest.fixture
async def stack(prefix: str, tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    """Users announced, a producers file, and a started tasks process reading commands."""
    policies = {
        "crm": {"types": [CREATE, UPDATE, "task.complete.v1"], "users": "*"},
        "ci": {"types": [CREATE], "users": [USERS[0]]},
    }
    producers_file = tmp_path / "producers.json"
    producers_file.write_text(json.dumps(policies))
    await announce_users(prefix, USERS, ["crm", "ci", "stranger"])
    key = SigningKey.generate()
    env = {
        "TASKS_PRODUCERS_FILE": str(producers_file),
        "TASKS_COMMANDS_METADATA_MAX_AGE_MS": "1000",
        "TASKS_MAX_TASKS_PER_USER": str(QUOTA),
        "TASKS_REMINDERS_ENABLED": "false",
    }
    tasks = tasks_process(prefix, key, **env).start()
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(MONGO_URL, tz_aware=True)
    db = mongo[f"{prefix}_tasks"]
    running: dict[str, Any] = {"tasks": tasks, "key": key, "db": db, "prefix": prefix, "env": env}
    try:
        tasks.wait_ready()
        await eventually(_all_users_known(db), what="the tasks service to know every user")
        yield running
    finally:
        tasks.kill()
        running["tasks"].kill()  # a test may have replaced it
        await mongo.close()


def _all_users_known(db: Any) -> Any:
    async def check() -> bool:
        return int(await db["users"].count_documents({})) == len(USERS)

    return check


def _producer(name: str, prefix: str) -> CommandProducer:
    # As the tests' observer (the super user when SASL is on); principals are tested with the ACLs.
    return CommandProducer(name, KAFKA_BOOTSTRAP, topic_prefix=f"{prefix}.", **client_options())


def _topic(prefix: str, logical: str) -> str:
    return f"{prefix}.{logical}"


async def _answers(
    prefix: str, producer: str, ids: set[str], within: float = 40
) -> dict[str, Envelope]:
    """The first answer to each command id, once every one of them has one."""
    events = await collect_events(
        _topic(prefix, answers_topic(producer)),
        lambda found: ids <= {e.causationid for e in found},
        within,
    )
    first: dict[str, Envelope] = {}
    for event in events:
        if event.causationid is not None:
            first.setdefault(event.causationid, event)
    return first


async def _owned(url: str, key: SigningKey, user: str) -> list[dict[str, Any]]:
    """The user's tasks as the user reads them through the REST API at `url`."""
    token, _ = key.mint(user)
    items: list[dict[str, Any]] = []
    cursor = None
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=15
    ) as api:
        while True:
            params = {"limit": "100", **({"cursor": cursor} if cursor else {})}
            page = (await api.get("/api/tasks", params=params)).json()
            items += page["items"]
            cursor = page["next_cursor"]
            if not cursor:
                return items


async def test_creates_resent_and_redelivered_across_a_sigkill_make_each_task_once(
    stack: dict[str, Any],
) -> None:
    prefix, key = stack["prefix"], stack["key"]
    rng = random.Random(13)
    async with _producer("crm", prefix) as crm:
        sent = [crm.envelope(USERS[n % 10], _create(f"task {n}")) for n in range(DISTINCT)]
        for envelope in sent[: DISTINCT // 2]:
            await crm.send(envelope)
        # Killed while commands are still arriving: some handled, maybe uncommitted.
        await _answers(prefix, "crm", {sent[0].id})
        stack["tasks"].kill()
        restarted = tasks_process(prefix, key, **stack["env"]).start()
        stack["tasks"] = restarted
        for envelope in sent[DISTINCT // 2 :]:
            await crm.send(envelope)
        for envelope in rng.sample(sent, RESENT):  # re-sends: same command, same id
            await crm.send(envelope)
        restarted.wait_ready()
        answers = await _answers(prefix, "crm", {e.id for e in sent}, within=180)

    assert {a.type for a in answers.values()} == {"task.created.v1"}
    published = await collect_events(
        _topic(prefix, TASKS_TOPIC),
        lambda found: len({e.causationid for e in found}) >= DISTINCT,
        within=120,
    )
    # The relay delivers at least once (a kill between publish and clear repeats an event, same
    # id); one event per command is the effect: one task each.
    created = list({e.id: e for e in published}.values())
    assert sorted(e.causationid or "" for e in created) == sorted(e.id for e in sent)
    by_command = {e.causationid: e for e in created}
    for envelope in sent:
        task = by_command[envelope.id].data["task"]
        assert (task["owner"], task["title"]) == (envelope.subject, envelope.data["task"]["title"])
    # Each readable by its owner through the gateway (the shipped stack, in front of tasks).
    async with serve_gateway(gateway_settings(prefix, key, restarted.url)) as gateway:
        for user in USERS:
            owned = await _owned(gateway, key, user)
            assert len(owned) == DISTINCT // len(USERS)
            assert {t["id"] for t in owned} == {
                e.data["task"]["id"] for e in created if e.subject == user
            }


def _create(title: str) -> CreateTask:
    return CreateTask(task=TaskCreate(title=title))


async def test_refused_commands_get_one_rejection_each_and_the_partition_flows_on(
    stack: dict[str, Any],
) -> None:
    prefix, key = stack["prefix"], stack["key"]
    target = f"{prefix}.{commands_topic('crm')}"
    raw = AIOKafkaProducer(bootstrap_servers=KAFKA_BOOTSTRAP, **client_options())
    await raw.start()
    try:
        async with (
            _producer("crm", prefix) as crm,
            _producer("ci", prefix) as ci,
            _producer("stranger", prefix) as stranger,
        ):
            u0, u1 = USERS[0], USERS[1]
            schema = crm.envelope(u0, _create("ok")).model_copy(
                update={"data": {"task": {"title": "", "colour": "red"}}}
            )
            refused = {
                "invalid-command": await crm.send(schema),
                "unknown-user": await crm.send(crm.envelope("nobody", _create("x"))),
                "no-such-task": await crm.complete_task(u0, "0" * 24),
            }
            ci_refused = {
                "not-allowed": await ci.update_task(u0, "0" * 24, TaskPatch(title="t")),
                "not-allowed-user": await ci.create_task(u1, TaskCreate(title="x")),
            }
            stranger_id = await stranger.create_task(u0, TaskCreate(title="x"))
            # Random bytes, then a command on the same partition (same key).
            await raw.send_and_wait(target, rng_bytes(), key=u0.encode())
            after = await crm.create_task(u0, TaskCreate(title="after the garbage"))
            quota = [
                await crm.create_task(USERS[2], TaskCreate(title=f"q{n}")) for n in range(QUOTA + 1)
            ]

            crm_answers = await _answers(prefix, "crm", {*refused.values(), after, *quota})
            ci_answers = await _answers(prefix, "ci", set(ci_refused.values()))
            stranger_answers = await _answers(prefix, "stranger", {stranger_id})
            task_id = crm_answers[after].data["task"]["id"]
            done = await crm.complete_task(u0, task_id)
            again = await crm.complete_task(u0, task_id)
            done_answers = await _answers(prefix, "crm", {done, again})
    finally:
        await raw.stop()

    for kind, command_id in refused.items():
        answer = crm_answers[command_id]
        assert answer.type == "command.rejected.v1"
        assert answer.data["problem"]["type"].endswith(kind)
    assert crm_answers[refused["invalid-command"]].data["problem"]["errors"]
    for command_id in ci_refused.values():
        assert ci_answers[command_id].data["problem"]["status"] == 403
    assert stranger_answers[stranger_id].data["problem"]["type"].endswith("unknown-producer")
    assert crm_answers[after].type == "task.created.v1"
    assert [crm_answers[q].type for q in quota].count("task.created.v1") == QUOTA
    last = crm_answers[quota[-1]]
    assert last.data["problem"]["type"].endswith("task-quota-exceeded")
    assert done_answers[done].type == "task.completed.v1"
    assert done_answers[again].type == "task.completed.v1"  # nothing left to change: answered
    # The garbage record got its rejection, named by where it lay.
    everything = await collect_events(
        _topic(prefix, answers_topic("crm")),
        lambda found: any(e.data.get("problem", {}).get("status") == 400 for e in found),
    )
    # Deduplicated by event id: the relay delivers at least once.
    garbage = list({e.id: e for e in everything if e.causationid is None}.values())
    assert len(garbage) == 1
    assert garbage[0].data["record"]["topic"] == target
    assert garbage[0].data["problem"]["type"].endswith("unparseable-command")
    # No refused command made a task: u0 has only the one made after the garbage.
    owned = await _owned(stack["tasks"].url, key, USERS[0])
    assert [(t["title"], t["status"]) for t in owned] == [("after the garbage", "done")]
    published = await collect_events(
        _topic(prefix, TASKS_TOPIC), lambda found: any(e.causationid == done for e in found)
    )
    tasks_events = list({e.id: e for e in published}.values())
    assert [e.type for e in tasks_events if e.causationid == done] == ["task.completed.v1"]
    assert not [e for e in tasks_events if e.causationid == again]


def rng_bytes() -> bytes:
    """Bytes that are no JSON document."""
    return b"\xff\x00" + random.Random(7).randbytes(64)


async def test_the_readme_example_creates_a_task_and_reads_its_answer(
    stack: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Producing events into Taskbus", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    definitions = code.split("asyncio.run(", 1)[0]  # everything but the call to run it
    prefix = stack["prefix"]

    def producer(name: str, bootstrap: str, **options: Any) -> CommandProducer:
        # The example's producer, on this test's broker (the example names the default port),
        # under its topic prefix and as the tests' observer.
        assert (bootstrap, options) == ("127.0.0.1:9092", {})
        return CommandProducer(name, KAFKA_BOOTSTRAP, topic_prefix=f"{prefix}.", **client_options())

    namespace: dict[str, Any] = {}
    exec(compile(definitions, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    namespace["CommandProducer"] = producer
    await namespace["main"](USERS[3])
    printed = capsys.readouterr().out
    assert printed.startswith("task.created.v1 ")
    assert "'title': 'Call the customer back'" in printed
    owned = await _owned(stack["tasks"].url, stack["key"], USERS[3])
    assert [t["title"] for t in owned] == ["Call the customer back"]


async def test_a_command_sent_right_after_its_users_sign_up_is_not_refused(
    stack: dict[str, Any],
) -> None:
    prefix = stack["prefix"]
    # No wait for the tasks service to have read it.
    await announce_users(prefix, ["fresh-user"], [])
    async with _producer("crm", prefix) as crm:
        command_id = await crm.create_task("fresh-user", TaskCreate(title="welcome call"))
        answers = await _answers(prefix, "crm", {command_id})
    assert answers[command_id].type == "task.created.v1"
