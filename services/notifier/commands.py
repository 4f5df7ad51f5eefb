"""notification.send.v1 from event producers: a registered template mailed to a Taskbus user.

The notifier reads every command topic (common.command_feed, group `notifier.commands`) and takes
only notification.send.v1; the tasks service answers every other type and unreadable records. A
command is checked like a task command (the producer's policy, the REST-style validation of
common.commands, a user the directory knows), then mailed through the Deliverer, so it obeys the
user's preferences (`notices`) and the per-user send cap, and is mailed at most once per
(producer, command id): its claim is keyed by them.

The answer (notification.sent.v1 or command.rejected.v1, with the command's id as causationid)
is published before the offset is committed; its id is derived from the command, so an answer
repeated after a crash is recognisably the same event.
"""

import uuid

import structlog
from aiokafka import ConsumerRecord
from faststream.kafka import KafkaBroker

from common.command_feed import CommandFeed, producer_of
from common.commands import (
    NOTIFIER_COMMANDS,
    CommandRefusedError,
    CommandRejected,
    NotificationSent,
    Policies,
    RecordRef,
    SendNotification,
    parse_envelope,
)
from common.events import Envelope, Payload, answers_topic, new_event
from common.kafka import publish
from services.notifier.delivery import Deliverer, Outcome
from services.notifier.domain import MAIL_CONSUMER, PermanentError, notice
from services.notifier.settings import NotifierSettings
from services.notifier.storage import Store

log = structlog.get_logger(__name__)
SOURCE = "/notifier"
_ANSWERS = uuid.UUID("4f6b1d1e-7c1a-4a8e-9a51-2b7f0e0c9d13")  # namespace of answer ids


class NotificationCommands:
    """Handles one command record: checks, mails, answers."""

    def __init__(
        self,
        settings: NotifierSettings,
        store: Store,
        deliverer: Deliverer,
        broker: KafkaBroker,
        policies: Policies,
    ) -> None:
        self._settings = settings
        self._store = store
        self._deliverer = deliverer
        self._broker = broker
        self.policies = policies

    async def handle(self, record: ConsumerRecord[bytes, bytes]) -> str:
        """Handle one record; only infrastructure (and transient SMTP) errors escape."""
        try:
            envelope = parse_envelope(record.value, record.key)
        except CommandRefusedError:
            return "tasks'"  # the tasks service answers records nobody can read
        if envelope.type not in NOTIFIER_COMMANDS:
            return "tasks'"
        producer = producer_of(self._settings, record.topic)
        command_key = f"{producer}:{envelope.id}"
        try:
            answer: Payload = await self._act(producer, command_key, envelope)
        except CommandRefusedError as refused:
            ref = RecordRef(topic=record.topic, partition=record.partition, offset=record.offset)
            answer = CommandRejected(
                command_type=envelope.type, problem=refused.problem(), record=ref
            )
        event = new_event(
            answer, source=SOURCE, subject=envelope.subject, causationid=envelope.id
        ).model_copy(update={"id": str(uuid.uuid5(_ANSWERS, command_key))})
        await publish(self._broker, self._settings, answers_topic(producer), event)
        return answer.event_type

    async def _act(self, producer: str, command_key: str, envelope: Envelope) -> Payload:
        command = self.policies.allowed_command(producer, envelope)
        if not isinstance(command, SendNotification):
            raise TypeError(f"no notifier handler for {type(command).__name__}")
        user = envelope.subject
        if await self._store.recipient(user) is None:
            raise CommandRefusedError(
                422, "unknown-user", "Unknown user", f"no Taskbus account has the id {user!r}"
            )
        mail_id = f"command:{command_key}"
        mail = notice(mail_id, user, command.params.subject, command.params.message)
        try:
            outcome = await self._deliverer.send(mail)
        except PermanentError as exc:
            raise CommandRefusedError(
                422, "undeliverable", "Undeliverable", f"the mail relay refused it: {exc}"
            ) from None
        if outcome == Outcome.DUPLICATE:
            # Handled before: answer as then (a capped one stays capped).
            done = await self._store.delivery(MAIL_CONSUMER, mail_id)
            if done is not None and done.get("state") == "suppressed":
                outcome = Outcome.RATE_LIMITED
        if outcome == Outcome.OPTED_OUT:
            raise CommandRefusedError(
                409, "opted-out", "Opted out", "the user turned notices off in their preferences"
            )
        if outcome == Outcome.RATE_LIMITED:
            raise CommandRefusedError(
                429, "send-cap", "Send cap reached", "the user's mail cap for now is reached"
            )
        log.info("notice mailed", producer=producer, outcome=str(outcome))
        return NotificationSent(user_id=user, template=command.template)


def notification_feed(
    settings: NotifierSettings, store: Store, deliverer: Deliverer, broker: KafkaBroker
) -> CommandFeed:
    """The command feed of the notifier (start it once the broker publishes)."""
    handler = NotificationCommands(
        settings, store, deliverer, broker, Policies(settings.producers_file)
    )
    return CommandFeed(
        settings,
        "notifier.commands",
        handler.handle,
        handler.policies,
        metadata_max_age_ms=settings.commands_metadata_max_age_ms,
    )
