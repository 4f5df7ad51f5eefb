"""Commands from event producers: validate, act once, answer (common/commands.py has the models).

One record at a time, in partition (so per-user) order; services/tasks/command_feed.py reads the
topics and commits after `handle` returns. Each command has one effect however often it arrives:
a create is the REST Idempotency-Key create with key "<producer>:<command id>"; an update or a
completion is remembered by the task it changed, in the same write (storage.py); any other
outcome by the command ledger (ledger.py). Every answer leaves through an outbox, written with
the effect, so an answer is lost no more than a domain event is. Infrastructure errors escape:
the record is then not committed and is handled again.
"""

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from aiokafka import ConsumerRecord
from aiokafka.errors import KafkaError
from pymongo.errors import ConnectionFailure

from common.clock import Clock, utcnow
from common.command_feed import producer_of
from common.commands import (
    NOTIFIER_COMMANDS,
    CommandRefusedError,
    CommandRejected,
    CompleteTask,
    CreateTask,
    Policies,
    RecordRef,
    UpdateTask,
    parse_envelope,
)
from common.events import (
    Envelope,
    Payload,
    TaskCompleted,
    TaskCreated,
    TaskUpdated,
    answers_topic,
    new_event,
)
from common.outbox import entry
from common.settings import ServiceSettings
from common.task_models import TaskPatch
from common.telemetry import current_traceparent
from services.tasks.domain import (
    BusyError,
    IdempotencyMismatchError,
    IdempotentTaskGoneError,
    TaskNotFoundError,
    apply_patch,
    new_task,
)
from services.tasks.events import SOURCE
from services.tasks.ledger import CommandLedger, UserDirectory
from services.tasks.quota import TaskQuota, TaskQuotaExceededError
from services.tasks.service import ATTEMPTS, Written
from services.tasks.storage import TaskStore, created_outbox, new_task_id

log = structlog.get_logger(__name__)
_BACKLOG_WAIT_S = 0.5
# How long a command for a user not known yet waits for the users topic to be read past it.
_USER_WAIT_S = 10.0
_DONE = TaskPatch(status="done")
# Errors of the database or broker (or a task locked too long): the record is handled again later.
INFRA_ERRORS = (ConnectionFailure, KafkaError, BusyError, TimeoutError)


@dataclass
class CommandHandler:
    """Turns one command record into its effect and its answer."""

    store: TaskStore
    ledger: CommandLedger
    users: UserDirectory
    policies: Policies
    settings: ServiceSettings
    tasks_written: Written  # tells the tasks relay which task has new events
    ledger_written: Callable[[str], None]  # tells the ledger's relay which command has an answer
    backlog_full: Callable[[], bool] = lambda: False
    quota: TaskQuota | None = None
    clock: Clock = utcnow

    async def handle(self, record: ConsumerRecord[bytes, bytes]) -> str:
        """Handle one record; its outcome (for logs). Only infrastructure errors escape."""
        producer = producer_of(self.settings, record.topic)
        ref = RecordRef(topic=record.topic, partition=record.partition, offset=record.offset)
        try:
            envelope = parse_envelope(record.value, record.key)
        except CommandRefusedError as refused:
            # No command id to answer by: the record's position names it, once.
            subject = (record.key or b"").decode(errors="replace")[:64] or producer
            where = f"{producer}:@{record.partition}:{record.offset}"
            return await self._reject(producer, where, refused, subject=subject, ref=ref)
        if envelope.type in NOTIFIER_COMMANDS:
            return "notifier's"  # the notifier reads the same topics and answers these
        command_key = f"{producer}:{envelope.id}"
        if await self.ledger.seen(command_key):
            return "seen"
        try:
            return await self._act(producer, command_key, envelope, record.timestamp)
        except CommandRefusedError as refused:
            return await self._reject(producer, command_key, refused, envelope=envelope, ref=ref)
        except INFRA_ERRORS:
            raise
        except Exception as exc:
            # A bug this record triggers must not stall its partition: answered, then passed.
            log.exception("command failed unexpectedly; rejecting it")
            bug = CommandRefusedError(500, "internal-error", "Internal error", type(exc).__name__)
            return await self._reject(producer, command_key, bug, envelope=envelope, ref=ref)

    async def _act(self, producer: str, command_key: str, envelope: Envelope, at_ms: int) -> str:
        command = self.policies.allowed_command(producer, envelope)
        owner = envelope.subject
        if not await self.users.known_by(owner, at_ms, _USER_WAIT_S):
            raise CommandRefusedError(
                422, "unknown-user", "Unknown user", f"no Taskbus account has the id {owner!r}"
            )
        while self.backlog_full():  # noqa: ASYNC110 - a count another loop refreshes, no event
            # Backpressure as for REST writes, but a command waits instead of being refused.
            await asyncio.sleep(_BACKLOG_WAIT_S)
        if isinstance(command, CreateTask):
            return await self._create(producer, command_key, envelope, command)
        if isinstance(command, UpdateTask):
            return await self._change(producer, command_key, envelope, command.changes)
        if isinstance(command, CompleteTask):
            return await self._change(producer, command_key, envelope, _DONE)
        raise TypeError(f"no tasks handler for {type(command).__name__}")

    def _answer(self, payload: Payload, envelope: Envelope) -> Envelope:
        return new_event(
            payload,
            source=SOURCE,
            subject=envelope.subject,
            traceparent=current_traceparent(),
            causationid=envelope.id,
        )

    async def _create(
        self, producer: str, command_key: str, envelope: Envelope, command: CreateTask
    ) -> str:
        owner, body = envelope.subject, command.task
        if self.quota is not None:
            try:
                await self.quota.admit(owner)
            except TaskQuotaExceededError:
                if await self.store.created_by(owner, command_key) is not None:
                    return "replayed"  # made before the user reached the cap
                raise CommandRefusedError(
                    409, "task-quota-exceeded", "Task limit reached", f"{owner} has too many tasks"
                ) from None
        task = new_task(new_task_id(), owner, body, self.clock())
        event = self._answer(TaskCreated(task=task.snapshot()), envelope)
        also = [entry(answers_topic(producer), event)]
        try:
            _, replayed = await self.store.create(
                task, event, idem_key=command_key, fingerprint=body.fingerprint(), also=also
            )
        except IdempotencyMismatchError:
            raise CommandRefusedError(
                409, "command-id-reused", "Command id reused", "this id named another command"
            ) from None
        except IdempotentTaskGoneError:
            return "replayed"  # made, answered, and since deleted
        if replayed:
            return "replayed"
        # The new task's whole outbox is known: the relay need not read it back.
        self.tasks_written(task.id, created_outbox(event, also))
        return "created"

    async def _change(
        self, producer: str, command_key: str, envelope: Envelope, patch: TaskPatch
    ) -> str:
        owner = envelope.subject
        task_id = envelope.data["task_id"]
        async with self.store.locked(task_id):
            for _ in range(ATTEMPTS):
                try:
                    before = await self.store.load(owner, task_id)
                except TaskNotFoundError:
                    raise CommandRefusedError(
                        404, "no-such-task", "No such task", f"{owner} has no task {task_id}"
                    ) from None
                if command_key in before.commands:
                    return "replayed"
                after, payload = apply_patch(before.task, patch, self.clock())
                if payload is None:
                    # Nothing to change: answered (once) from the ledger, no domain event.
                    same = TaskUpdated(task=after.snapshot(), changed=())
                    done = TaskCompleted(task=after.snapshot())
                    unchanged = done if patch is _DONE else same
                    answer = entry(answers_topic(producer), self._answer(unchanged, envelope))
                    if await self.ledger.answer(command_key, "unchanged", answer):
                        self.ledger_written(command_key)
                    return "unchanged"
                event = self._answer(payload, envelope)
                also = [entry(answers_topic(producer), event)]
                if await self.store.save(before, after, event, also=also, command=command_key):
                    self.tasks_written(task_id)
                    return "changed"
        raise TimeoutError(f"{task_id}: kept losing to concurrent writes")

    async def _reject(
        self,
        producer: str,
        command_key: str,
        refused: CommandRefusedError,
        *,
        envelope: Envelope | None = None,
        subject: str = "",
        ref: RecordRef,
    ) -> str:
        payload = CommandRejected(
            command_type=envelope.type if envelope else None,
            problem=refused.problem(),
            record=ref,
        )
        event = new_event(
            payload,
            source=SOURCE,
            subject=envelope.subject if envelope else subject,
            traceparent=current_traceparent(),
            causationid=envelope.id if envelope else None,
        )
        if await self.ledger.answer(command_key, "rejected", entry(answers_topic(producer), event)):
            self.ledger_written(command_key)
        log.info("command rejected", producer=producer, reason=refused.kind, detail=refused.detail)
        return "rejected"
