"""Commands from event producers: their models, the rejection answer, and who may send what.

A producer writes CloudEvents 1.0 envelopes (`common.events.Envelope`) to its own topic
`taskbus.commands.<producer>`, keyed by (and with `subject` =) the id of the user the command
concerns; the broker's ACL on that topic proves who wrote a record. The tasks service answers on
`taskbus.answers.<producer>`: the domain event (`task.created.v1`, ...) carrying the command's id
as `causationid`, or `command.rejected.v1` with an RFC 9457 problem.

The `data` of a command is validated by the REST API's own models (common/task_models.py), so a
command obeys exactly the rules and limits of POST and PATCH /api/tasks.
"""

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import orjson
import structlog
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    StringConstraints,
    TypeAdapter,
    ValidationError,
)

from common.events import ANSWERS_PREFIX, COMMANDS_PREFIX, Envelope, Payload
from common.task_models import TaskCreate, TaskPatch

log = structlog.get_logger(__name__)

CREATE = "task.create.v1"
UPDATE = "task.update.v1"
COMPLETE = "task.complete.v1"
SEND_NOTIFICATION = "notification.send.v1"
PROBLEMS = "https://taskbus.dev/problems/"


def _not_dlq(name: str) -> str:
    if name == "dlq":
        raise ValueError("'dlq' is kept for a dead-letter topic")
    return name


# A producer's name is one topic-name segment, never "dlq" (kept free for a dead-letter topic).
ProducerName = Annotated[
    str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,48}$"), AfterValidator(_not_dlq)
]
TaskId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{24}$")]


class Command(BaseModel):
    """Base of a command's `data`: strict about unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    command_type: ClassVar[str]
    topic: ClassVar[str] = f"{COMMANDS_PREFIX}{{producer}}"


class CreateTask(Command):
    """task.create.v1: a new task for the user in `subject`; `task` is POST /api/tasks's body."""

    command_type: ClassVar[str] = CREATE
    task: TaskCreate


class UpdateTask(Command):
    """task.update.v1: change the user's task; `changes` is PATCH /api/tasks/{id}'s body."""

    command_type: ClassVar[str] = UPDATE
    task_id: TaskId
    changes: TaskPatch


class CompleteTask(Command):
    """task.complete.v1: move the user's task to done."""

    command_type: ClassVar[str] = COMPLETE
    task_id: TaskId


class Notice(BaseModel):
    """The parameters of the registered template `notice`: a subject line and a plain message."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    subject: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=120)]
    message: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=4000)]


class SendNotification(Command):
    """notification.send.v1: mail a registered template to the user in `subject` (never to an
    address); the notifier sends it within the user's preferences and send cap."""

    command_type: ClassVar[str] = SEND_NOTIFICATION
    template: Literal["notice"]
    params: Notice


COMMAND_TYPES: dict[str, type[Command]] = {
    cls.command_type: cls for cls in (CreateTask, UpdateTask, CompleteTask, SendNotification)
}
# Which service handles a command type; the other passes it over (both read every command topic).
NOTIFIER_COMMANDS = frozenset({SEND_NOTIFICATION})


class Problem(BaseModel):
    """An RFC 9457 problem document, as a rejection carries it."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    type: str
    title: str
    status: int
    detail: str
    errors: tuple[dict[str, Any], ...] = ()


class RecordRef(BaseModel):
    """Where a record was read: what names a command whose own id could not be read."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    topic: str
    partition: int
    offset: int


class CommandRejected(Payload):
    """A command was refused and had no effect; `problem` says why."""

    event_type: ClassVar[str] = "command.rejected.v1"
    topic: ClassVar[str] = f"{ANSWERS_PREFIX}{{producer}}"
    command_type: str | None = None
    problem: Problem
    record: RecordRef | None = None


class NotificationSent(Payload):
    """The answer to a notification.send.v1 that was mailed (or had been, for a re-send)."""

    event_type: ClassVar[str] = "notification.sent.v1"
    topic: ClassVar[str] = f"{ANSWERS_PREFIX}{{producer}}"
    user_id: str
    template: str


class CommandRefusedError(Exception):
    """A command is refused; `problem()` is the reason its producer reads."""

    def __init__(
        self,
        status: int,
        kind: str,
        title: str,
        detail: str,
        errors: tuple[dict[str, Any], ...] = (),
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.kind = kind  # the last segment of the problem type URI
        self.title = title
        self.detail = detail
        self.errors = errors

    def problem(self) -> Problem:
        """The RFC 9457 document of this refusal."""
        return Problem(
            type=PROBLEMS + self.kind,
            title=self.title,
            status=self.status,
            detail=self.detail,
            errors=self.errors,
        )


def _errors(exc: ValidationError) -> tuple[dict[str, Any], ...]:
    # The REST API's 422 shape: where and why, never the (possibly huge) input.
    return tuple(
        {"loc": list(err["loc"]), "msg": err["msg"], "type": err["type"]} for err in exc.errors()
    )


def parse_envelope(value: bytes | None, key: bytes | None) -> Envelope:
    """The command's envelope; CommandRefusedError if it is not one (or not keyed by its user)."""
    try:
        envelope = Envelope.model_validate_json(value or b"")
    except ValidationError as exc:
        raise CommandRefusedError(
            400,
            "unparseable-command",
            "Unparseable command",
            "the record is not a CloudEvents 1.0 JSON envelope",
            _errors(exc),
        ) from None
    if key is None or key != envelope.key:
        raise CommandRefusedError(
            400,
            "wrong-key",
            "Wrong record key",
            "a command is keyed by the user id in its subject (per-user order)",
        )
    return envelope


def parse_command(envelope: Envelope) -> Command:
    """The typed command; CommandRefusedError for an unknown type or invalid data."""
    model = COMMAND_TYPES.get(envelope.type)
    if model is None:
        raise CommandRefusedError(
            422,
            "unknown-command-type",
            "Unknown command type",
            f"{envelope.type!r} is not one of {sorted(COMMAND_TYPES)}",
        )
    try:
        return model.model_validate(envelope.data)
    except ValidationError as exc:
        raise CommandRefusedError(
            422, "invalid-command", "Invalid command", f"invalid {envelope.type} data", _errors(exc)
        ) from None


class ProducerPolicy(BaseModel):
    """What one producer may do: which command types, for which users ("*": any user)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    types: tuple[str, ...]
    users: Literal["*"] | tuple[str, ...]

    def check(self, envelope: Envelope) -> None:
        """CommandRefusedError (403) unless this producer may send this command for this user."""
        if envelope.type not in self.types:
            raise CommandRefusedError(
                403, "not-allowed", "Not allowed", f"this producer may not send {envelope.type}"
            )
        if self.users != "*" and envelope.subject not in self.users:
            raise CommandRefusedError(
                403, "not-allowed", "Not allowed", "this producer may not act for this user"
            )


_POLICIES = TypeAdapter(dict[ProducerName, ProducerPolicy])


class Policies:
    """The producers file (`{"<name>": {"types": [...], "users": "*" | [...]}}`), re-read on change.

    `make producer` adds producers while the service runs: the file is read again when its
    modification time changes. A missing file means no producer; an unreadable one keeps the
    last good policies (a half-written file must not revoke everyone).
    """

    def __init__(self, path: str | Path) -> None:
        self._path = Path(path)
        self._stamp: float | None = None
        self._policies: Mapping[str, ProducerPolicy] = {}

    def current(self) -> Mapping[str, ProducerPolicy]:
        """The policies as the file says now."""
        try:
            stamp = os.stat(self._path).st_mtime
        except FileNotFoundError:
            self._stamp, self._policies = None, {}
            return self._policies
        if stamp != self._stamp:
            try:
                self._policies = _POLICIES.validate_python(orjson.loads(self._path.read_bytes()))
                self._stamp = stamp
            except (OSError, ValueError) as exc:
                log.warning(
                    "producers file unreadable, keeping the last",
                    path=str(self._path),
                    error=str(exc),
                )
        return self._policies

    def get(self, producer: str) -> ProducerPolicy | None:
        """The producer's policy; None for a producer the file does not name."""
        return self.current().get(producer)

    def allowed_command(self, producer: str, envelope: Envelope) -> Command:
        """The typed command if its producer may send it; CommandRefusedError otherwise."""
        policy = self.get(producer)
        if policy is None:
            raise CommandRefusedError(
                403, "unknown-producer", "Unknown producer", "no policy names this producer"
            )
        policy.check(envelope)
        return parse_command(envelope)
