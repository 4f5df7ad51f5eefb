"""docs/events/ holds every type's schema as the models make it, and no change breaks one."""

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal

import jsoncompat
import pytest
from pydantic import BaseModel, ConfigDict

from common.commands import COMMAND_TYPES, Command
from common.event_schemas import model_types, standalone_schema
from common.events import PAYLOAD_TYPES, Payload
from tools import event_schemas
from tools.event_schemas import ASYNCAPI_FILE, EVENTS_DIR, breaking, compatible, stale, write


def test_the_committed_schemas_are_what_the_models_generate() -> None:
    assert stale() == []


def test_no_committed_schema_is_broken_by_the_models() -> None:
    assert breaking() == []


def test_every_event_and_command_model_is_found() -> None:
    found = model_types()
    assert set(PAYLOAD_TYPES) | set(COMMAND_TYPES) <= set(found)
    assert all(issubclass(m, Payload | Command) for m in found.values())
    assert {p.name.removesuffix(".json") for p in EVENTS_DIR.glob("*.json")} == set(found)


class _Snapshot(BaseModel):
    model_config = ConfigDict(extra="forbid")
    status: Literal["todo", "done"]
    version: int


class _Old(BaseModel):
    """The committed version."""

    model_config = ConfigDict(extra="forbid")
    event_type: ClassVar[str] = "thing.changed.v1"
    task: _Snapshot
    note: str


Edit = Callable[[dict[str, Any], dict[str, Any]], None]


def _changed(edit: Edit) -> dict[str, Any]:
    """The old schema after `edit(payload definition, snapshot definition)`."""
    schema = standalone_schema(_Old)
    edit(schema["$defs"]["_Old"], schema["$defs"]["_Snapshot"])
    return schema


def _remove_note(data: dict[str, Any], _: dict[str, Any]) -> None:
    del data["properties"]["note"]
    data["required"].remove("note")


def _retype_version(_: dict[str, Any], task: dict[str, Any]) -> None:
    task["properties"]["version"] = {"type": "string"}


def _add_owner(data: dict[str, Any], _: dict[str, Any]) -> None:
    data["properties"]["owner"] = {"type": "string"}


def _require_owner(data: dict[str, Any], task: dict[str, Any]) -> None:
    _add_owner(data, task)
    data["required"].append("owner")


def _narrow_status(_: dict[str, Any], task: dict[str, Any]) -> None:
    task["properties"]["status"]["enum"] = ["todo"]


def _widen_status(_: dict[str, Any], task: dict[str, Any]) -> None:
    task["properties"]["status"]["enum"] = ["todo", "done", "gone"]


def _pattern_note(data: dict[str, Any], _: dict[str, Any]) -> None:
    data["properties"]["note"]["pattern"] = r"\S"


def _format_note(data: dict[str, Any], _: dict[str, Any]) -> None:
    data["properties"]["note"]["format"] = "email"


def _reword_note(data: dict[str, Any], _: dict[str, Any]) -> None:
    data["properties"]["note"]["description"] = "new words"


@pytest.mark.parametrize(
    "edit",
    [_remove_note, _retype_version, _require_owner, _narrow_status, _pattern_note, _format_note],
    ids=lambda e: e.__name__,
)
def test_a_breaking_change_is_refused_for_events_and_commands(edit: Edit) -> None:
    old = standalone_schema(_Old)
    assert not compatible(old, _changed(edit), "both")
    assert not compatible(old, _changed(edit), "deserializer")


def test_what_each_direction_lets_change() -> None:
    old = standalone_schema(_Old)
    optional, widened = _changed(_add_owner), _changed(_widen_status)
    # A consumer of an event refuses fields and values it does not know (extra="forbid").
    assert not compatible(old, optional, "both")
    assert not compatible(old, widened, "both")
    # Taskbus still accepts every command an older producer sends.
    assert compatible(old, optional, "deserializer")
    assert compatible(old, widened, "deserializer")
    assert compatible(old, _changed(_reword_note), "both")
    # jsoncompat alone lets an added pattern through; tools.event_schemas does not.
    patterned = _changed(_pattern_note)
    assert jsoncompat.check_compat(json.dumps(old), json.dumps(patterned), "deserializer")
    assert compatible(patterned, old, "deserializer")  # dropping a pattern only widens
    assert not compatible(patterned, old, "both")


@pytest.fixture
def committed(tmp_path: Path) -> tuple[Path, Path]:
    events = tmp_path / "events"
    shutil.copytree(EVENTS_DIR, events)
    asyncapi = tmp_path / "asyncapi.json"
    shutil.copy(ASYNCAPI_FILE, asyncapi)
    return events, asyncapi


def test_a_model_changed_incompatibly_fails_and_is_not_regenerated(
    committed: tuple[Path, Path],
) -> None:
    events, asyncapi = committed
    path = events / "task.created.v1.json"
    published = json.loads(path.read_text())
    # As if the committed version had a field the model has since dropped.
    published["$defs"]["TaskSnapshot"]["properties"]["colour"] = {"type": "string"}
    published["$defs"]["TaskSnapshot"]["required"].append("colour")
    path.write_text(event_schemas.render(published))
    assert len(problems := breaking(events)) == 1
    assert problems[0].startswith("task.created.v1: not backward compatible")
    assert write(events, asyncapi) == problems
    assert json.loads(path.read_text()) == published  # nothing written over the contract


def test_a_dropped_type_and_a_stale_file_are_reported(committed: tuple[Path, Path]) -> None:
    events, asyncapi = committed
    (events / "task.archived.v1.json").write_text("{}\n")
    reformatted = json.dumps(json.loads((events / "task.deleted.v1.json").read_text()))
    (events / "task.deleted.v1.json").write_text(reformatted)  # same schema, other text
    assert breaking(events) == ["task.archived.v1: published, but no model defines it any more"]
    assert {p.split(":")[0].rsplit("/", 1)[-1] for p in stale(events, asyncapi)} == {
        "task.archived.v1.json",
        "task.deleted.v1.json",
    }
