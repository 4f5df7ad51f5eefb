"""Tasks: models and rules (no I/O)."""

import base64
import binascii
import hashlib
import hmac
from datetime import datetime, timedelta
from typing import Annotated, Literal

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
)

from common.events import (
    Payload,
    TaskCompleted,
    TaskPriority,
    TaskSnapshot,
    TaskStatus,
    TaskUpdated,
)

# The write bodies live in common so the command topics and the producer helper share them.
from common.task_models import DueAt, Tag, TaskCreate, TaskPatch

PRIORITY_RANK: dict[str, int] = {"low": 0, "medium": 1, "high": 2, "urgent": 3}
RANK_PRIORITY: dict[int, TaskPriority] = {0: "low", 1: "medium", 2: "high", 3: "urgent"}
MAX_PAGE = 100
SortKey = Literal["created_at", "-created_at", "due_at", "-due_at", "priority", "-priority"]
SORT_FIELDS = ("created_at", "due_at", "priority")


class TaskError(Exception):
    """Base of the rule violations api.py turns into problems."""


class TaskNotFoundError(TaskError):
    """No such task for this owner (also: someone else's task, or a tombstone)."""


class PreconditionFailedError(TaskError):
    """If-Match named a version that is no longer current."""


class InvalidCursorError(TaskError):
    """The cursor was not issued by us, or for another query."""


class IdempotencyMismatchError(TaskError):
    """An Idempotency-Key was reused for a different request body."""


class IdempotentTaskGoneError(TaskError):
    """The task an Idempotency-Key created has since been deleted."""


class BusyError(TaskError):
    """The task is locked by a concurrent writer for too long, or its outbox is full."""


class BacklogFullError(TaskError):
    """Too many events wait for the relay: writes are refused until it catches up."""


class Task(BaseModel):
    """A task as the API shows it."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    id: str
    owner: str
    title: str
    description: str
    status: TaskStatus
    priority: TaskPriority
    due_at: datetime | None
    tags: tuple[str, ...]
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None
    version: int

    def snapshot(self) -> TaskSnapshot:
        """What events carry."""
        return TaskSnapshot(
            id=self.id,
            owner=self.owner,
            title=self.title,
            status=self.status,
            priority=self.priority,
            due_at=self.due_at,
            tags=self.tags,
            version=self.version,
        )


class TaskPage(BaseModel):
    """One page of GET /api/tasks."""

    items: list[Task]
    next_cursor: str | None


class TaskStats(BaseModel):
    """GET /api/tasks/stats: the caller's counts."""

    total: int
    by_status: dict[TaskStatus, int]
    by_priority: dict[TaskPriority, int]


def new_task(task_id: str, owner: str, body: TaskCreate, now: datetime) -> Task:
    """The task a create makes (version 1)."""
    return Task(
        id=task_id,
        owner=owner,
        title=body.title,
        description=body.description,
        status=body.status,
        priority=body.priority,
        due_at=body.due_at,
        tags=tuple(body.tags),
        created_at=now,
        updated_at=now,
        completed_at=now if body.status == "done" else None,
        version=1,
    )


def apply_patch(task: Task, patch: TaskPatch, now: datetime) -> tuple[Task, Payload | None]:
    """The task after the patch and the one event it causes (None when nothing changed)."""
    wanted = patch.model_dump(include=patch.model_fields_set)
    if "tags" in wanted:
        wanted["tags"] = tuple(wanted["tags"])
    changed = tuple(sorted(k for k, v in wanted.items() if getattr(task, k) != v))
    if not changed:
        return task, None
    updates = {k: wanted[k] for k in changed}
    if "status" in changed:
        updates["completed_at"] = now if updates["status"] == "done" else None
    after = task.model_copy(update={**updates, "updated_at": now, "version": task.version + 1})
    # One change, one event: finishing a task is the event consumers care about.
    if "status" in changed and after.status == "done":
        return after, TaskCompleted(task=after.snapshot())
    return after, TaskUpdated(task=after.snapshot(), changed=changed)


def wants_reminder(task: Task, reminded_for: datetime | None) -> bool:
    """Whether the due-date reminder for this task's current due date is still owed."""
    return task.due_at is not None and task.status != "done" and task.due_at != reminded_for


def reminder_deadline(now: datetime, lead_s: float) -> datetime:
    """Tasks due at or before this moment get their reminder now."""
    return now + timedelta(seconds=lead_s)


def etag(version: int) -> str:
    """The strong entity tag of a task version."""
    return f'"{version}"'


def _tags(header: str) -> list[str]:
    return [t.strip() for t in header.split(",") if t.strip()]


def if_match_ok(header: str | None, version: int) -> bool:
    """RFC 9110 If-Match: strong comparison; absent means unconditional."""
    if header is None:
        return True
    tags = _tags(header)
    return "*" in tags or etag(version) in tags


def if_none_match_hit(header: str | None, version: int) -> bool:
    """RFC 9110 If-None-Match: weak comparison; True means answer 304."""
    if header is None:
        return False
    tags = [t.removeprefix("W/") for t in _tags(header)]
    return "*" in tags or etag(version) in tags


def escape_regex(text: str) -> str:
    """Escape regex metacharacters so that both PCRE (MongoDB) and RE2 (FerretDB) read literals."""
    return "".join("\\" + c if c in "\\^$.|?*+()[]{}" else c for c in text)


class ListQuery(BaseModel):
    """Query string of GET /api/tasks."""

    model_config = ConfigDict(extra="forbid")
    status: TaskStatus | None = None
    priority: TaskPriority | None = None
    tag: Tag | None = None
    due_before: DueAt = None
    due_after: DueAt = None
    q: Annotated[str, StringConstraints(min_length=1, max_length=100)] | None = None
    sort: SortKey = "-created_at"
    limit: int = Field(default=20, ge=1, le=MAX_PAGE)
    # Two base64url parts (what encode_cursor makes; empty: the first page); else a 400.
    cursor: (
        Annotated[
            str,
            StringConstraints(max_length=512),
            Field(json_schema_extra={"pattern": r"^([A-Za-z0-9_-]*\.[A-Za-z0-9_-]*)?$"}),
        ]
        | None
    ) = None

    @property
    def sort_field(self) -> str:
        """The field the list is ordered by."""
        return self.sort.lstrip("-")

    @property
    def descending(self) -> bool:
        """Whether the order is descending."""
        return self.sort.startswith("-")

    def shape(self) -> bytes:
        """Everything a cursor must agree with: filters and order, not the page position."""
        return orjson.dumps(self.model_dump(mode="json", exclude={"cursor", "limit"}))


class CursorPosition(BaseModel):
    """Where the previous page ended: its last sort value and id."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    value: datetime | int
    id: str


def encode_cursor(secret: bytes, query: ListQuery, position: CursorPosition) -> str:
    """An opaque, signed cursor bound to this query's filters and order."""
    body = orjson.dumps(
        [
            query.sort,
            position.value.isoformat() if isinstance(position.value, datetime) else position.value,
            position.id,
        ]
    )
    mac = hmac.new(secret, body + b"\0" + query.shape(), hashlib.sha256).digest()[:16]
    return _b64(body) + "." + _b64(mac)


def decode_cursor(secret: bytes, query: ListQuery, cursor: str) -> CursorPosition:
    """The position a cursor names; InvalidCursorError if forged, garbled or for another query."""
    try:
        body_part, mac_part = cursor.split(".")
        body, mac = _unb64(body_part), _unb64(mac_part)
        expected = hmac.new(secret, body + b"\0" + query.shape(), hashlib.sha256).digest()[:16]
        if not hmac.compare_digest(mac, expected):
            raise InvalidCursorError("cursor does not belong to this query")
        sort, value, task_id = orjson.loads(body)
        if sort != query.sort:
            raise InvalidCursorError("cursor does not belong to this query")
        if query.sort_field != "priority":
            value = datetime.fromisoformat(value)
        return CursorPosition(value=value, id=task_id)
    except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError) as exc:
        raise InvalidCursorError("malformed cursor") from exc


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
