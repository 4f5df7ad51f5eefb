"""The AsyncAPI document: valid for the official parser, complete, and true to the code."""

import copy
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from common.asyncapi import document
from common.asyncapi_text import DLQ_HEADERS, OPERATIONS, RECORD_HEADERS, RETRY_HEADERS
from common.event_schemas import model_types
from common.settings import ServiceSettings
from gateway.events import CACHE_INVALIDATION, SESSION_REVOCATION
from services.notifier import dlq
from services.notifier import events as notifier_events
from services.notifier.settings import NotifierSettings
from tests.support.asyncapi import parse_asyncapi

PREFIX = "t-asyncapi."


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    settings = ServiceSettings(
        topic_prefix=PREFIX,
        kafka_bootstrap="k1:9092,k2:9092",
        kafka_security_protocol="SASL_SSL",
        kafka_username="svc-gateway",
        kafka_password=SecretStr("a-password-for-the-test"),
    )
    return document(settings)


def test_the_asyncapi_parser_accepts_the_document(doc: dict[str, Any], tmp_path: Path) -> None:
    verdict = parse_asyncapi(doc, tmp_path)
    assert verdict["valid"], verdict["errors"]
    assert verdict["errors"] == []
    assert verdict["version"] == "3.0.0"
    assert verdict["channels"] == len(doc["channels"])
    assert verdict["operations"] == len(OPERATIONS)
    # The parser's own count: every type on the bus plus the notifier's retry and dead letter.
    assert verdict["messages"] == len(model_types()) + 2


def test_the_parser_reports_an_invalid_document(doc: dict[str, Any], tmp_path: Path) -> None:
    broken = copy.deepcopy(doc)
    broken["operations"]["tasks.publishTaskEvents"]["channel"] = {"$ref": "#/channels/nope"}
    broken["channels"]["users"]["address"] = 7
    broken["components"]["schemas"]["task.created.v1"]["properties"]["id"]["type"] = 7
    verdict = parse_asyncapi(broken, tmp_path)
    assert not verdict["valid"]
    for where in (
        "operations/tasks.publishTaskEvents/channel",
        "channels/users/address",
        "components/schemas/task.created.v1",
    ):
        assert any(e["path"].startswith(where) for e in verdict["errors"]), (where, verdict)


def test_every_event_and_command_model_has_its_message_on_its_topic(doc: dict[str, Any]) -> None:
    messages = doc["components"]["messages"]
    carried = {
        channel["address"].removeprefix(PREFIX): set(channel["messages"])
        for channel in doc["channels"].values()
    }
    for event_type, model in model_types().items():
        assert messages[event_type]["payload"] == {"$ref": f"#/components/schemas/{event_type}"}
        assert event_type in carried[model.topic]  # type: ignore[attr-defined]
        schema = doc["components"]["schemas"][event_type]
        assert schema["properties"]["type"]["const"] == event_type
    for answer in ("task.created.v1", "notification.sent.v1", "command.rejected.v1"):
        assert answer in carried["taskbus.answers.{producer}"]
    assert "notification.send.v1" in carried["taskbus.commands.{producer}"]


def test_each_answering_service_sends_its_own_answers(doc: dict[str, Any]) -> None:
    def sent(op_id: str) -> set[str]:
        return {m["$ref"].rsplit("/", 1)[1] for m in doc["operations"][op_id]["messages"]}

    assert sent("notifier.sendAnswers") == {"notification.sent.v1", "command.rejected.v1"}
    assert "notification.sent.v1" not in sent("tasks.sendAnswers")
    assert {"task.created.v1", "command.rejected.v1"} <= sent("tasks.sendAnswers")


def test_channels_carry_this_deployments_prefix_and_parameters(doc: dict[str, Any]) -> None:
    channels = doc["channels"]
    assert channels["tasks"]["address"] == PREFIX + "taskbus.tasks"
    assert channels["commands"]["address"] == PREFIX + "taskbus.commands.{producer}"
    assert set(channels["commands"]["parameters"]) == {"producer"}
    tiers = channels["notifierRetry"]["parameters"]["tier"]["enum"]
    most = NotifierSettings.model_fields["retry_tiers"].metadata
    assert len(tiers) == next(m.le for m in most if hasattr(m, "le"))
    servers = list(doc["servers"].values())
    assert [server["host"] for server in servers] == ["k1:9092", "k2:9092"]
    assert {server["protocol"] for server in servers} == {"kafka-secure"}
    scheme = {"$ref": "#/components/securitySchemes/scramSha512"}
    assert all(server["security"] == [scheme] for server in servers)
    assert doc["components"]["securitySchemes"]["scramSha512"]["type"] == "scramSha512"
    plain = document(ServiceSettings(kafka_security_protocol="PLAINTEXT"))
    assert [s.get("security") for s in plain["servers"].values()] == [None]


def test_consumer_groups_are_the_services_own(doc: dict[str, Any]) -> None:
    groups = {
        op_id: op["bindings"]["kafka"]["groupId"]["enum"][0].removeprefix(PREFIX)
        for op_id, op in doc["operations"].items()
        if "bindings" in op
    }
    notifier = NotifierSettings(topic_prefix="")
    assert groups["gateway.receiveTaskEvents"] == CACHE_INVALIDATION.group
    assert groups["gateway.receiveUserEvents"] == SESSION_REVOCATION.group
    for op_id, purpose in [
        ("notifier.receiveUserEvents", "users"),
        ("notifier.receiveTaskEvents", "tasks"),
        ("notifier.receiveRetry", "retry"),
        ("notifier.receiveDeadLetters", "dlq-replay"),
    ]:
        assert groups[op_id] == notifier_events.group_id(notifier, purpose)


def test_retry_and_dead_letter_headers_are_the_notifiers() -> None:
    retry = {
        notifier_events.H_ATTEMPT,
        notifier_events.H_NOT_BEFORE,
        notifier_events.H_ERROR,
        notifier_events.H_ORIGIN,
        dlq.H_REPLAYED_FROM,
    }
    dead = {
        notifier_events.H_DLQ_REASON,
        notifier_events.H_ERROR,
        notifier_events.H_DLQ_ATTEMPTS,
        notifier_events.H_ORIGIN,
        notifier_events.H_DLQ_AT,
    }
    assert set(RETRY_HEADERS) == retry
    assert set(DLQ_HEADERS) == dead
    assert {"ce_type", "ce_id", "traceparent"} <= set(RECORD_HEADERS)
