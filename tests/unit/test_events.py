"""The event envelope and payload contracts."""

import pytest
from pydantic import ValidationError

from common.events import Envelope, TaskDeleted, UserRegistered, new_event


def test_envelope_round_trips_through_json_with_typed_payload() -> None:
    payload = UserRegistered(user_id="u1", email="ada@example.com", name="Ada")
    event = new_event(
        payload, source="/auth", subject="u1", traceparent="00-" + "1" * 32 + "-" + "2" * 16 + "-01"
    )
    parsed = Envelope.model_validate_json(event.model_dump_json())
    assert parsed == event
    assert parsed.payload() == payload
    assert parsed.type == "user.registered.v1"
    assert parsed.key == b"u1"


def test_new_events_get_unique_ids() -> None:
    payload = TaskDeleted(task_id="t", owner="u")
    ids = {new_event(payload, source="/tasks", subject="u").id for _ in range(100)}
    assert len(ids) == 100


def test_envelope_rejects_unknown_fields() -> None:
    event = new_event(TaskDeleted(task_id="t", owner="u"), source="/tasks", subject="u")
    raw = event.model_dump(mode="json") | {"extra": 1}
    with pytest.raises(ValidationError, match="extra"):
        Envelope.model_validate(raw)


def test_payload_rejects_unknown_fields_and_unknown_types() -> None:
    event = new_event(TaskDeleted(task_id="t", owner="u"), source="/tasks", subject="u")
    tampered = event.model_copy(update={"data": {"task_id": "t", "owner": "u", "admin": True}})
    with pytest.raises(ValidationError, match="admin"):
        tampered.payload()
    with pytest.raises(KeyError):
        event.model_copy(update={"type": "nope.v1"}).payload()


def test_envelope_requires_timezone_aware_time() -> None:
    raw = new_event(TaskDeleted(task_id="t", owner="u"), source="/x", subject="u").model_dump(
        mode="json"
    )
    raw["time"] = "2026-01-01T00:00:00"
    with pytest.raises(ValidationError, match="time"):
        Envelope.model_validate(raw)
