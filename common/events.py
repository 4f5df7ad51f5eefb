"""Event contracts: the CloudEvents 1.0 envelope, every payload, and the topic names.

Events are keyed by the owning user's id so that one user's events stay in order on one partition.
"""

import uuid
from typing import Any, ClassVar, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, EmailStr, Field

from common.clock import utcnow

# Logical topic names; the physical name is `settings.topic(name)` (a prefix isolates test runs).
USERS_TOPIC = "taskbus.users"
TASKS_TOPIC = "taskbus.tasks"
# The notifier's own retry ladder and dead-letter topic.
NOTIFIER_RETRY_TOPIC = "taskbus.notifier.retry"
NOTIFIER_DLQ_TOPIC = "taskbus.notifier.dlq"
# Event producers (common/commands.py): commands in on one topic per producer, so the broker's ACL
# on the topic proves who wrote a record; answers out on the producer's own answers topic.
COMMANDS_PREFIX = "taskbus.commands."
ANSWERS_PREFIX = "taskbus.answers."


def commands_topic(producer: str) -> str:
    """The logical topic a producer writes its commands to."""
    return f"{COMMANDS_PREFIX}{producer}"


def answers_topic(producer: str) -> str:
    """The logical topic a producer reads its answers from."""
    return f"{ANSWERS_PREFIX}{producer}"


TaskStatus = Literal["todo", "in_progress", "done"]
TaskPriority = Literal["low", "medium", "high", "urgent"]
# Why sessions were revoked (user.sessions_revoked.v1 `reason`, auth's stored `revoked_reason`).
RevokeReason = Literal[
    "logout", "logout_all", "password_changed", "refresh_reuse", "password_reset"
]


class Payload(BaseModel):
    """Base of every event payload: frozen, strict about unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    event_type: ClassVar[str]
    topic: ClassVar[str]


class UserRegistered(Payload):
    """A new account exists; the notifier sends the welcome email."""

    event_type: ClassVar[str] = "user.registered.v1"
    topic: ClassVar[str] = USERS_TOPIC
    user_id: str
    email: EmailStr
    name: str


class PasswordResetRequested(Payload):
    """Someone asked to reset this account's password; the notifier mails the link.

    v2: the token travels sealed for the notifier (common.sealing), never in plaintext (v1).
    """

    event_type: ClassVar[str] = "user.password_reset_requested.v2"
    topic: ClassVar[str] = USERS_TOPIC
    user_id: str
    email: EmailStr
    name: str
    sealed_token: str
    expires_at: AwareDatetime


class SessionsRevoked(Payload):
    """Sessions ended before their access tokens expire; the gateway refuses them from now on.

    `session_ids` empty means every session of the user issued before `revoked_before`.
    """

    event_type: ClassVar[str] = "user.sessions_revoked.v1"
    topic: ClassVar[str] = USERS_TOPIC
    user_id: str
    session_ids: tuple[str, ...] = ()
    revoked_before: AwareDatetime
    reason: RevokeReason


class TaskSnapshot(BaseModel):
    """The task as it stands after the change (what consumers need, nothing internal)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    id: str
    owner: str
    title: str
    status: TaskStatus
    priority: TaskPriority
    due_at: AwareDatetime | None = None
    tags: tuple[str, ...] = ()
    version: int


class TaskCreated(Payload):
    """A task was created."""

    event_type: ClassVar[str] = "task.created.v1"
    topic: ClassVar[str] = TASKS_TOPIC
    task: TaskSnapshot


class TaskUpdated(Payload):
    """A task's fields changed; `changed` names them."""

    event_type: ClassVar[str] = "task.updated.v1"
    topic: ClassVar[str] = TASKS_TOPIC
    task: TaskSnapshot
    changed: tuple[str, ...]


class TaskCompleted(Payload):
    """A task moved to done."""

    event_type: ClassVar[str] = "task.completed.v1"
    topic: ClassVar[str] = TASKS_TOPIC
    task: TaskSnapshot


class TaskDeleted(Payload):
    """A task was deleted."""

    event_type: ClassVar[str] = "task.deleted.v1"
    topic: ClassVar[str] = TASKS_TOPIC
    task_id: str
    owner: str


class TaskDueSoon(Payload):
    """A task comes due within the reminder lead time (emitted once per due date)."""

    event_type: ClassVar[str] = "task.due_soon.v1"
    topic: ClassVar[str] = TASKS_TOPIC
    task: TaskSnapshot


PAYLOAD_TYPES: dict[str, type[Payload]] = {
    cls.event_type: cls
    for cls in (
        UserRegistered,
        PasswordResetRequested,
        SessionsRevoked,
        TaskCreated,
        TaskUpdated,
        TaskCompleted,
        TaskDeleted,
        TaskDueSoon,
    )
}


class Envelope(BaseModel):
    """CloudEvents 1.0 structured envelope, with the W3C trace context that caused the event."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    specversion: Literal["1.0"] = "1.0"
    id: str = Field(min_length=1, max_length=64)
    source: str = Field(min_length=1, max_length=200)
    type: str = Field(min_length=1, max_length=100)
    time: AwareDatetime
    subject: str = Field(min_length=1, max_length=64)
    datacontenttype: Literal["application/json"] = "application/json"
    traceparent: str | None = None
    # CloudEvents extension: the id of the command this event answers (common/commands.py).
    # Absent, not null, on events no command caused.
    causationid: str | None = Field(
        default=None, min_length=1, max_length=64, exclude_if=lambda v: v is None
    )
    data: dict[str, Any]

    def payload(self) -> Payload:
        """The typed payload; raises KeyError for an unknown type, ValidationError for bad data."""
        return PAYLOAD_TYPES[self.type].model_validate(self.data)

    @property
    def key(self) -> bytes:
        """The Kafka message key: the owning user's id."""
        return self.subject.encode()


def new_event(
    payload: Payload,
    *,
    source: str,
    subject: str,
    traceparent: str | None = None,
    causationid: str | None = None,
) -> Envelope:
    """Wrap a payload in a fresh envelope with a unique id."""
    return Envelope(
        id=str(uuid.uuid4()),
        source=source,
        type=payload.event_type,
        time=utcnow(),
        subject=subject,
        traceparent=traceparent,
        causationid=causationid,
        data=payload.model_dump(mode="json"),
    )
