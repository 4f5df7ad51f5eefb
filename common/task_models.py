"""The task write bodies and their field rules: one definition for the REST API and the commands.

services/tasks (POST and PATCH /api/tasks), common/commands.py (task.create.v1, task.update.v1 on
the command topics) and client/producer.py all validate with these models, so a limit changed
here changes it everywhere.
"""

import hashlib
from datetime import UTC, datetime
from typing import Annotated

import orjson
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

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


Title = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Description = Annotated[str, StringConstraints(max_length=10_000)]
Tag = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=50)]
Tags = Annotated[list[Tag], Field(max_length=20), AfterValidator(lambda v: list(dict.fromkeys(v)))]
DueAt = Annotated[AwareDatetime | None, AfterValidator(_to_ms)]


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

    model_config = ConfigDict(extra="forbid")
    title: Title | None = None
    description: Description | None = None
    status: TaskStatus | None = None
    priority: TaskPriority | None = None
    due_at: DueAt = None
    tags: Tags | None = None

    @model_validator(mode="after")
    def _only_due_at_nullable(self) -> "TaskPatch":
        nulls = [f for f in self.model_fields_set if getattr(self, f) is None and f != "due_at"]
        if nulls:
            raise ValueError(f"may not be null: {', '.join(sorted(nulls))}")
        return self
