"""The task write bodies and their field rules: one definition for the REST API and the commands.

services/tasks (POST and PATCH /api/tasks), common/commands.py (task.create.v1, task.update.v1 on
the command topics) and client/producer.py all validate with these models, so a limit changed
here changes it everywhere.
"""

import hashlib
import re
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from common.events import TaskPriority, TaskStatus

# Dates at or past this are refused: storage keeps "no due date" as a far-future sort key.
LATEST_DATE = datetime(9000, 1, 1, tzinfo=UTC)


def _to_ms(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    try:
        value = value.astimezone(UTC)
    except OverflowError:  # e.g. 9999-12-31T23:59:59-23:59 lies past datetime.max in UTC
        raise ValueError("dates must be before the year 9000") from None
    if value >= LATEST_DATE:
        raise ValueError("dates must be before the year 9000")
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


# Trimmed, so at least one character must be no whitespace (the contract's pattern says so).
_VISIBLE = r"\S"
Title = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200),
    Field(json_schema_extra={"pattern": _VISIBLE}),
]
Description = Annotated[str, StringConstraints(max_length=10_000)]
Tag = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=50),
    Field(json_schema_extra={"pattern": _VISIBLE}),
]
Tags = Annotated[list[Tag], Field(max_length=20), AfterValidator(lambda v: list(dict.fromkeys(v)))]
# Years 0001 to 8999 (datetime has no year 0; 9000 on is refused above), for the contract.
_YEARS = r"^(?:[1-8][0-9]{3}|0(?:[1-9][0-9]{2}|0[1-9][0-9]|00[1-9]))-"


_DATE_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt]")


def _text_only(value: object) -> object:
    """A date is an RFC 3339 date-time: lax parsing would take 0 or "0.5" for 1970-01-01."""
    if isinstance(value, int | float) or (isinstance(value, str) and not _DATE_TIME.match(value)):
        raise ValueError("dates are RFC 3339 date-time strings")
    return value


DueAt = Annotated[
    AwareDatetime | None,
    BeforeValidator(_text_only),
    AfterValidator(_to_ms),
    Field(json_schema_extra={"pattern": _YEARS}),
]


def _no_null_defaults(schema: dict[str, Any]) -> None:
    """A field that may be left out but not sent as null has no `default: null` in the schema."""
    for field in schema.get("properties", {}).values():
        if "default" in field and field["default"] is None and "anyOf" not in field:
            del field["default"]


class TaskCreate(BaseModel):
    """Body of POST /api/tasks, and the data of a task.create.v1 command."""

    model_config = ConfigDict(extra="forbid")
    title: Title
    description: Description = ""
    status: TaskStatus = "todo"
    priority: TaskPriority = "medium"
    due_at: DueAt = None
    tags: Tags = Field(default_factory=list)

    def fingerprint(self) -> str:
        """A digest of the request, to tell an idempotent retry from a reused key."""
        return hashlib.sha256(orjson.dumps(self.model_dump(mode="json"))).hexdigest()


class TaskPatch(BaseModel):
    """Body of PATCH /api/tasks/{id}: only the fields sent change; due_at may be null."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_no_null_defaults)
    # Absent means unchanged; null is refused (below) and so not in the schema.
    title: Title | SkipJsonSchema[None] = None
    description: Description | SkipJsonSchema[None] = None
    status: TaskStatus | SkipJsonSchema[None] = None
    priority: TaskPriority | SkipJsonSchema[None] = None
    due_at: DueAt = None
    tags: Tags | SkipJsonSchema[None] = None

    @model_validator(mode="after")
    def _only_due_at_nullable(self) -> "TaskPatch":
        nulls = [f for f in self.model_fields_set if getattr(self, f) is None and f != "due_at"]
        if nulls:
            raise ValueError(f"may not be null: {', '.join(sorted(nulls))}")
        return self
