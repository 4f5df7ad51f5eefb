"""Commands from producers: parsing, the REST rules on their data, policies, topic names."""

import os
import re
from pathlib import Path

import orjson
import pytest

from client.producer import CommandProducer
from common.command_feed import command_pattern, producer_of, producer_topics
from common.commands import (
    COMPLETE,
    CREATE,
    SEND_NOTIFICATION,
    UPDATE,
    CommandRefusedError,
    CreateTask,
    Policies,
    ProducerPolicy,
    UpdateTask,
    parse_command,
    parse_envelope,
)
from common.events import Envelope, TaskDeleted, new_event
from common.task_models import TaskCreate, TaskPatch
from services.notifier.domain import UNCAPPED, Preferences, allowed_by, notice, subject
from services.tasks.settings import TasksSettings


def _producer() -> CommandProducer:
    return CommandProducer("crm", "127.0.0.1:1", topic_prefix="p.")  # never connected


def _raw(envelope: Envelope) -> bytes:
    return envelope.model_dump_json().encode()


def _refusal(call: object) -> CommandRefusedError:
    assert isinstance(call, CommandRefusedError)
    return call


def test_a_helper_built_command_parses_back_to_the_same_command() -> None:
    producer = _producer()
    command = UpdateTask(task_id="a" * 24, changes=TaskPatch(title="new", due_at=None))
    envelope = producer.envelope("u1", command)
    assert producer.commands_topic == "p.taskbus.commands.crm"
    parsed = parse_command(parse_envelope(_raw(envelope), b"u1"))
    assert parsed == command
    assert isinstance(parsed, UpdateTask)
    # Only the fields sent change: an explicit null due date is kept, nothing else appears.
    assert parsed.changes.model_fields_set == {"title", "due_at"}


def test_bytes_that_are_no_envelope_are_refused_as_unparseable() -> None:
    with pytest.raises(CommandRefusedError) as refused:
        parse_envelope(b"\xff\x00 not json", b"u1")
    problem = refused.value.problem()
    assert (problem.status, problem.type) == (
        400,
        "https://taskbus.dev/problems/unparseable-command",
    )
    assert problem.errors


def test_a_command_keyed_by_another_user_than_its_subject_is_refused() -> None:
    envelope = _producer().envelope("u1", CreateTask(task=TaskCreate(title="t")))
    with pytest.raises(CommandRefusedError) as refused:
        parse_envelope(_raw(envelope), b"u2")
    assert refused.value.kind == "wrong-key"
    with pytest.raises(CommandRefusedError):
        parse_envelope(_raw(envelope), None)


@pytest.mark.parametrize(
    "task",
    [
        {"title": ""},
        {"title": "x" * 201},
        {"title": "t", "tags": ["t"] * 21},
        {"title": "t", "due_at": "2026-01-01T00:00:00"},  # no offset
        {"title": "t", "colour": "red"},
    ],
)
def test_create_data_obeys_the_rest_bodys_rules(task: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="validation error"):
        TaskCreate.model_validate(task)  # what POST /api/tasks refuses ...
    envelope = new_event(TaskDeleted(task_id="x", owner="u"), source="/t", subject="u")
    command = envelope.model_copy(update={"type": CREATE, "data": {"task": task}})
    with pytest.raises(CommandRefusedError) as refused:
        parse_command(command)  # ... a command refuses too
    assert refused.value.status == 422
    assert refused.value.problem().errors[0]["loc"][0] == "task"


def test_an_update_may_not_null_a_field_the_patch_rule_protects() -> None:
    envelope = new_event(TaskDeleted(task_id="x", owner="u"), source="/t", subject="u")
    bad = envelope.model_copy(
        update={"type": UPDATE, "data": {"task_id": "a" * 24, "changes": {"title": None}}}
    )
    with pytest.raises(CommandRefusedError, match=r"invalid task\.update\.v1"):
        parse_command(bad)


def test_an_unknown_command_type_is_refused() -> None:
    envelope = new_event(TaskDeleted(task_id="x", owner="u"), source="/t", subject="u")
    with pytest.raises(CommandRefusedError) as refused:
        parse_command(envelope)
    assert refused.value.kind == "unknown-command-type"


@pytest.mark.parametrize(
    ("policy", "type_", "user", "allowed"),
    [
        ({"types": [CREATE], "users": "*"}, CREATE, "anyone", True),
        ({"types": [CREATE], "users": "*"}, COMPLETE, "anyone", False),
        ({"types": [CREATE, COMPLETE], "users": ["u1"]}, COMPLETE, "u1", True),
        ({"types": [CREATE, COMPLETE], "users": ["u1"]}, CREATE, "u2", False),
    ],
)
def test_a_policy_allows_only_its_types_for_its_users(
    policy: dict[str, object], type_: str, user: str, allowed: bool
) -> None:
    envelope = new_event(TaskDeleted(task_id="x", owner=user), source="/t", subject=user)
    check = ProducerPolicy.model_validate(policy).check
    if allowed:
        check(envelope.model_copy(update={"type": type_}))
    else:
        with pytest.raises(CommandRefusedError) as refused:
            check(envelope.model_copy(update={"type": type_}))
        assert refused.value.status == 403


def test_the_producers_file_is_read_again_when_it_changes_and_a_bad_one_keeps_the_last(
    tmp_path: Path,
) -> None:
    path = tmp_path / "producers.json"
    policies = Policies(path)
    assert policies.get("crm") is None  # no file: no producer
    path.write_bytes(orjson.dumps({"crm": {"types": [CREATE], "users": "*"}}))
    assert policies.get("crm") == ProducerPolicy(types=(CREATE,), users="*")
    path.write_bytes(orjson.dumps({"crm": {"types": [CREATE, UPDATE], "users": ["u1"]}}))
    os.utime(path, (1, 1))  # a new modification time even within the clock's resolution
    assert policies.get("crm") == ProducerPolicy(types=(CREATE, UPDATE), users=("u1",))
    path.write_bytes(b'{"crm": {"types": [')  # half written
    os.utime(path, (2, 2))
    assert policies.get("crm") == ProducerPolicy(types=(CREATE, UPDATE), users=("u1",))
    path.write_bytes(orjson.dumps({"Bad Name": {"types": [], "users": "*"}}))
    os.utime(path, (3, 3))
    assert policies.get("crm") is not None  # an invalid name is refused like bad JSON


def test_the_command_topics_are_found_by_a_prefixed_pattern() -> None:
    settings = TasksSettings(topic_prefix="p1.")
    pattern = re.compile(command_pattern(settings))
    assert pattern.match("p1.taskbus.commands.crm")
    assert producer_of(settings, "p1.taskbus.commands.crm") == "crm"
    for other in (
        "p2.taskbus.commands.crm",
        "p1.taskbus.answers.crm",
        "p1.taskbus.commands.dlq",
        "p1.taskbus.commands.crm.x",
    ):
        assert not pattern.match(other), other
    assert producer_topics(["crm"]) == ["taskbus.answers.crm"]


def test_causationid_is_absent_unless_a_command_caused_the_event() -> None:
    plain = new_event(TaskDeleted(task_id="x", owner="u"), source="/t", subject="u")
    assert "causationid" not in orjson.loads(plain.model_dump_json())
    caused = new_event(
        TaskDeleted(task_id="x", owner="u"), source="/t", subject="u", causationid="c-1"
    )
    assert orjson.loads(caused.model_dump_json())["causationid"] == "c-1"
    assert Envelope.model_validate_json(caused.model_dump_json()) == caused


@pytest.mark.parametrize(
    "data",
    [
        {"template": "password_reset", "params": {"subject": "s", "message": "m"}},
        {"template": "notice", "params": {"subject": "x" * 121, "message": "m"}},
        {"template": "notice", "params": {"subject": "s", "message": " "}},
        {"template": "notice", "params": {"subject": "s", "message": "m", "to": "a@b.c"}},
    ],
)
def test_a_notification_names_a_registered_template_and_never_an_address(
    data: dict[str, object],
) -> None:
    envelope = new_event(TaskDeleted(task_id="x", owner="u"), source="/t", subject="u")
    with pytest.raises(CommandRefusedError) as refused:
        parse_command(envelope.model_copy(update={"type": SEND_NOTIFICATION, "data": data}))
    assert refused.value.kind == "invalid-command"


def test_notices_follow_their_own_preference_and_carry_the_producers_subject() -> None:
    mail = notice("command:crm:1", "u1", "Invoice ready", "See the portal.")
    assert allowed_by(Preferences(), mail.kind)
    assert not allowed_by(Preferences(notices=False), mail.kind)
    assert allowed_by(Preferences(notices=False), "reminder")
    assert subject(mail, "Ada") == "Invoice ready"
    assert mail.kind not in UNCAPPED  # counts against the send cap
