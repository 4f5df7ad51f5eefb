"""Tasks rules: validation, patches and the event each change causes, ETags, cursors."""

import re
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import SecretStr, ValidationError

from common.events import TaskCompleted, TaskUpdated
from common.task_models import TaskCreate, TaskPatch
from services.tasks.domain import (
    CursorPosition,
    InvalidCursorError,
    ListQuery,
    Task,
    apply_patch,
    decode_cursor,
    encode_cursor,
    escape_regex,
    if_match_ok,
    if_none_match_hit,
    new_task,
    wants_reminder,
)
from services.tasks.settings import TasksSettings
from tests.support.kafka_auth import PRODUCTION_KAFKA

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
SECRET = b"k" * 32


def _task(**fields: object) -> Task:
    return new_task("a" * 24, "u1", TaskCreate.model_validate({"title": "t", **fields}), NOW)


@pytest.mark.parametrize("field", ["owner", "id", "version", "created_at", "admin"])
def test_create_rejects_unknown_and_server_owned_fields(field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        TaskCreate.model_validate({"title": "t", field: "x"})


@pytest.mark.parametrize(
    "body",
    [
        {"title": ""},
        {"title": "x" * 201},
        {"title": "t", "description": "d" * 10_001},
        {"title": "t", "tags": [f"t{i}" for i in range(21)]},
        {"title": "t", "tags": ["x" * 51]},
        {"title": "t", "status": "archived"},
        {"title": "t", "due_at": "2030-01-01T00:00:00"},  # naive: ambiguous
        {"title": "t", "due_at": "9500-01-01T00:00:00Z"},
        {"title": "t", "due_at": "9999-12-31T23:59:59-23:59"},  # past datetime.max in UTC
    ],
)
def test_create_enforces_sizes_and_values(body: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        TaskCreate.model_validate(body)


def test_dates_are_kept_at_millisecond_precision_and_tags_deduplicated() -> None:
    body = TaskCreate.model_validate(
        {"title": " t ", "due_at": "2030-01-01T01:00:00.123456+01:00", "tags": ["a", "a", "b"]}
    )
    assert body.title == "t"
    assert body.due_at == datetime(2030, 1, 1, 0, 0, 0, 123000, tzinfo=UTC)
    assert body.tags == ["a", "b"]


def test_patch_allows_clearing_due_at_but_no_other_nulls() -> None:
    assert TaskPatch.model_validate({"due_at": None}).model_fields_set == {"due_at"}
    with pytest.raises(ValidationError, match="may not be null: title"):
        TaskPatch.model_validate({"title": None})


def test_patch_bumps_version_and_names_changed_fields() -> None:
    task = _task()
    later = NOW + timedelta(minutes=1)
    after, event = apply_patch(task, TaskPatch(title="new", priority="high"), later)
    assert (after.title, after.priority, after.version, after.updated_at) == (
        "new",
        "high",
        2,
        later,
    )
    assert isinstance(event, TaskUpdated)
    assert event.changed == ("priority", "title")
    assert event.task.version == 2


def test_patch_without_changes_emits_nothing_and_keeps_the_version() -> None:
    task = _task(priority="high")
    after, event = apply_patch(task, TaskPatch(priority="high"), NOW)
    assert event is None
    assert after is task


def test_completing_emits_completed_and_reopening_clears_completed_at() -> None:
    task = _task()
    done, event = apply_patch(task, TaskPatch(status="done"), NOW)
    assert isinstance(event, TaskCompleted)
    assert done.completed_at == NOW
    reopened, event = apply_patch(done, TaskPatch(status="todo"), NOW)
    assert isinstance(event, TaskUpdated)
    assert reopened.completed_at is None
    assert reopened.version == 3


def test_reminder_is_owed_once_per_due_date_and_not_for_done_tasks() -> None:
    due = NOW + timedelta(hours=1)
    task = _task(due_at=due.isoformat())
    assert wants_reminder(task, None)
    assert not wants_reminder(task, due)
    moved, _ = apply_patch(task, TaskPatch(due_at=due + timedelta(days=1)), NOW)
    assert wants_reminder(moved, due)
    done, _ = apply_patch(task, TaskPatch(status="done"), NOW)
    assert not wants_reminder(done, None)
    assert not wants_reminder(_task(), None)


def test_conditional_headers_follow_rfc_9110() -> None:
    assert if_match_ok(None, 3)
    assert if_match_ok('"3"', 3)
    assert if_match_ok('"1", "3"', 3)
    assert if_match_ok("*", 3)
    assert not if_match_ok('"2"', 3)
    assert not if_match_ok('W/"3"', 3)  # If-Match compares strongly
    assert if_none_match_hit('W/"3"', 3)  # If-None-Match compares weakly
    assert not if_none_match_hit('"2"', 3)
    assert not if_none_match_hit(None, 3)


def test_escaped_search_text_matches_only_itself() -> None:
    text = r"a.b*c (d) [e] {f} ^g$ h|i? j+k \ l"
    pattern = escape_regex(text)
    assert re.fullmatch(pattern, text)
    assert not re.fullmatch(escape_regex("a.b"), "axb")


def test_list_query_rejects_unknown_params_and_long_pages() -> None:
    assert ListQuery().limit == 20
    with pytest.raises(ValidationError):
        ListQuery.model_validate({"limit": 101})
    with pytest.raises(ValidationError):
        ListQuery.model_validate({"owner": "someone-else"})
    with pytest.raises(ValidationError):
        ListQuery.model_validate({"q": "x" * 101})


def test_cursor_round_trips_and_is_bound_to_its_query_and_secret() -> None:
    query = ListQuery(status="todo", sort="-created_at")
    position = CursorPosition(value=NOW, id="a" * 24)
    cursor = encode_cursor(SECRET, query, position)
    assert decode_cursor(SECRET, query, cursor) == position
    assert decode_cursor(SECRET, query.model_copy(update={"limit": 5}), cursor) == position

    with pytest.raises(InvalidCursorError):
        decode_cursor(SECRET, ListQuery(status="done", sort="-created_at"), cursor)
    with pytest.raises(InvalidCursorError):
        decode_cursor(b"other" * 8, query, cursor)
    body, mac = cursor.split(".")
    for forged in (body[:-2] + "AA." + mac, "garbage", "", "a.b.c", cursor + "x"):
        with pytest.raises(InvalidCursorError):
            decode_cursor(SECRET, query, forged)


def test_priority_cursor_keeps_integer_positions() -> None:
    query = ListQuery(sort="priority")
    position = CursorPosition(value=2, id="b" * 24)
    assert decode_cursor(SECRET, query, encode_cursor(SECRET, query, position)) == position


def test_production_refuses_the_dev_cursor_secret() -> None:
    with pytest.raises(ValidationError, match="CURSOR_SECRET"):
        TasksSettings(environment="production", **PRODUCTION_KAFKA)
    secret = SecretStr("s" * 32)
    assert TasksSettings(
        environment="production", cursor_secret=secret, **PRODUCTION_KAFKA
    ).is_production


def test_static_jwks_setting_must_be_a_key_set() -> None:
    assert TasksSettings(jwks_json='{"keys": []}').static_jwks() == {"keys": []}
    with pytest.raises(ValidationError):
        TasksSettings(jwks_json='{"nope": 1}')
