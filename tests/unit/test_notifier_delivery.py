"""Delivery ordering and record routing, with in-memory stand-ins for Mongo, SMTP and Kafka."""

import asyncio
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any, cast

import pytest
from aiokafka import ConsumerRecord
from faststream.kafka import KafkaBroker
from pymongo.errors import AutoReconnect, ServerSelectionTimeoutError

from common.events import (
    TaskDueSoon,
    TaskSnapshot,
    UserRegistered,
    new_event,
)
from services.notifier.delivery import Deliverer, Outcome
from services.notifier.domain import PermanentError, Preferences, TransientError
from services.notifier.events import Pipeline
from services.notifier.mailer import Accepted, Mailer
from services.notifier.metrics import Metrics
from services.notifier.settings import NotifierSettings
from services.notifier.storage import Claim, Store
from tests.support.resets import reset_requested
from tests.support.waiting import eventually

SETTINGS = NotifierSettings(environment="test", retry_tiers=2, rate_limit_count=2)


@dataclass
class FakeStore:
    """Records what the deliverer asks of the database, in order."""

    states: dict[str, str] = field(default_factory=dict)
    recipients: dict[str, tuple[str, str]] = field(default_factory=dict)
    prefs: dict[str, Preferences] = field(default_factory=dict)
    slots: int = 0
    calls: list[str] = field(default_factory=list)
    finish_failures: list[Exception] = field(default_factory=list)
    # Cleared, it holds a `finish` write in flight (a slow database at the 250).
    finish_gate: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.finish_gate.set()

    async def claim(self, consumer: str, event_id: str, owner: str, lease_s: float) -> Claim:
        self.calls.append("claim")
        state = self.states.get(event_id)
        if state is None:
            self.states[event_id] = "sending"
            return Claim("claimed", fresh=True)
        if state in ("sent", "suppressed"):
            return Claim("done")
        if state == "sending":
            return Claim("busy")
        self.states[event_id] = "sending"
        return Claim("claimed", previous=state)

    async def finish(self, consumer: str, event_id: str, state: str, detail: str = "") -> None:
        self.calls.append(f"finish:{state}")
        if self.finish_failures:
            raise self.finish_failures.pop(0)
        await self.finish_gate.wait()
        self.states[event_id] = state

    async def release(self, consumer: str, event_id: str, owner: str, state: str, e: str) -> None:
        self.calls.append(f"release:{state}")
        self.states[event_id] = state

    async def remember_recipient(self, user_id: str, email: str, name: str) -> None:
        self.recipients[user_id] = (email, name)

    async def recipient(self, user_id: str) -> tuple[str, str] | None:
        return self.recipients.get(user_id)

    async def preferences(self, user_id: str) -> Preferences:
        return self.prefs.get(user_id, Preferences())

    async def take_send_slot(self, user_id: str, window: int, cap: int) -> bool:
        self.slots += 1
        return self.slots <= cap


class FakeMailer(Mailer):
    """Renders for real; a send records the message, answers 250 (`accepted`), then QUITs."""

    def __init__(self, store: FakeStore) -> None:
        super().__init__(SETTINGS)
        self.store = store
        self.sent: list[EmailMessage] = []
        self.failures: list[Exception] = []
        self.budgets: list[float] = []

    async def send(self, message: EmailMessage, accepted: Accepted, within_s: float) -> None:
        self.store.calls.append("send")
        self.budgets.append(within_s)
        if self.failures:
            raise self.failures.pop(0)
        self.sent.append(message)
        await accepted()
        self.store.calls.append("quit")


def make() -> tuple[Deliverer, FakeStore, FakeMailer]:
    store = FakeStore()
    mailer = FakeMailer(store)
    return Deliverer(SETTINGS, cast(Store, store), mailer, Metrics()), store, mailer


def welcome(user_id: str = "u1") -> Any:
    payload = UserRegistered(user_id=user_id, email=f"{user_id}@x.io", name="Ada")
    return new_event(payload, source="auth", subject=user_id)


def reminder(user_id: str = "u1") -> Any:
    task = TaskSnapshot(id="t", owner=user_id, title="T", status="todo", priority="low", version=1)
    task = task.model_copy(update={"due_at": welcome().time})
    return new_event(TaskDueSoon(task=task), source="tasks", subject=user_id)


async def test_claim_comes_before_send_and_the_record_on_the_250_before_quit() -> None:
    deliverer, store, mailer = make()

    assert await deliverer.deliver(welcome()) == Outcome.SENT
    # Recorded before QUIT: a kill while the relay is slow to answer QUIT sends nothing twice.
    assert store.calls == ["claim", "send", "finish:sent", "quit"]
    assert len(mailer.sent) == 1


async def test_the_whole_conversation_must_end_inside_the_lease() -> None:
    deliverer, _, mailer = make()
    await deliverer.deliver(welcome())

    [budget] = mailer.budgets
    assert 0 < budget <= SETTINGS.smtp_timeout_s < SETTINGS.claim_lease_s


async def test_a_failed_record_of_an_accepted_mail_is_retried_not_the_mail() -> None:
    deliverer, store, mailer = make()
    store.finish_failures.append(AutoReconnect("primary stepped down"))
    event = welcome()

    assert await deliverer.deliver(event) == Outcome.SENT
    assert store.states[event.id] == "sent"
    assert store.calls == ["claim", "send", "finish:sent", "finish:sent", "quit"]
    assert await deliverer.deliver(event) == Outcome.DUPLICATE
    assert len(mailer.sent) == 1


async def test_a_stop_during_the_record_still_records_the_accepted_mail() -> None:
    deliverer, store, mailer = make()
    event = welcome()
    store.finish_gate.clear()  # the database is slow to acknowledge `sent`
    delivering = asyncio.create_task(deliverer.deliver(event))
    await eventually(lambda: "finish:sent" in store.calls, 5, "the record to start")

    delivering.cancel()  # a graceful stop cancelling the handler
    store.finish_gate.set()
    with pytest.raises(asyncio.CancelledError):
        await delivering
    await eventually(lambda: store.states[event.id] == "sent", 5, "the record to land")
    assert await deliverer.deliver(event) == Outcome.DUPLICATE
    assert len(mailer.sent) == 1


async def test_a_redelivered_event_sends_nothing() -> None:
    deliverer, _, mailer = make()
    event = welcome()
    await deliverer.deliver(event)

    assert await deliverer.deliver(event) == Outcome.DUPLICATE
    assert len(mailer.sent) == 1


async def test_a_transient_failure_releases_the_claim_for_the_retry() -> None:
    deliverer, store, mailer = make()
    mailer.failures.append(TransientError("down"))
    event = welcome()

    with pytest.raises(TransientError):
        await deliverer.deliver(event)
    assert store.states[event.id] == "retrying"
    assert await deliverer.deliver(event) == Outcome.SENT


async def test_a_permanent_failure_marks_the_claim_dead() -> None:
    deliverer, store, mailer = make()
    mailer.failures.append(PermanentError("550"))
    event = welcome()

    with pytest.raises(PermanentError):
        await deliverer.deliver(event)
    assert store.states[event.id] == "dead"


async def test_an_event_claimed_elsewhere_is_retried_later_not_sent() -> None:
    deliverer, store, mailer = make()
    event = welcome()
    store.states[event.id] = "sending"

    with pytest.raises(TransientError, match="live claim"):
        await deliverer.deliver(event)
    assert mailer.sent == []


async def test_reminders_respect_opt_out_and_need_a_known_address() -> None:
    deliverer, store, mailer = make()
    with pytest.raises(TransientError, match="no address"):
        await deliverer.deliver(reminder())
    await deliverer.deliver(welcome())
    store.prefs["u1"] = Preferences(reminders=False)

    assert await deliverer.deliver(reminder()) == Outcome.OPTED_OUT
    store.prefs["u1"] = Preferences(reminders=True)
    assert await deliverer.deliver(reminder()) == Outcome.SENT
    assert [m["X-Taskbus-Kind"] for m in mailer.sent] == ["welcome", "reminder"]


async def test_rate_cap_counts_first_claims_only_and_spares_welcomes() -> None:
    deliverer, store, mailer = make()
    await deliverer.deliver(welcome())
    mailer.failures.append(TransientError("down"))
    retried = reminder()
    with pytest.raises(TransientError):
        await deliverer.deliver(retried)
    assert await deliverer.deliver(retried) == Outcome.SENT  # the retry takes no new slot

    assert await deliverer.deliver(reminder()) == Outcome.SENT
    assert await deliverer.deliver(reminder()) == Outcome.RATE_LIMITED
    assert store.slots == 3
    assert len(mailer.sent) == 3


@dataclass
class FakeBroker:
    published: list[dict[str, Any]] = field(default_factory=list)

    async def publish(self, body: bytes, **kwargs: Any) -> None:
        self.published.append({"body": body, **kwargs})


class ScriptedDeliverer:
    def __init__(self, error: Exception | None) -> None:
        self.error = error

    async def deliver(self, _: object) -> Outcome:
        if self.error:
            raise self.error
        return Outcome.SENT


def record(value: bytes, headers: list[tuple[str, bytes]] | None = None) -> Any:
    return ConsumerRecord(
        topic="p.taskbus.users",
        partition=3,
        offset=42,
        timestamp=0,
        timestamp_type=0,
        key=b"u1",
        value=value,
        checksum=None,
        serialized_key_size=2,
        serialized_value_size=len(value),
        headers=headers or [("ce_type", b"user.registered.v1")],
    )


def pipeline(error: Exception | None) -> tuple[Pipeline, FakeBroker]:
    broker = FakeBroker()
    settings = NotifierSettings(
        environment="test", topic_prefix="p.", retry_tiers=2, infra_backoff_s=0
    )
    pipe = Pipeline(
        cast(KafkaBroker, broker),
        settings,
        cast(Deliverer, ScriptedDeliverer(error)),
        Metrics(),
        random.Random(1),
    )
    return pipe, broker


async def test_a_transient_failure_goes_to_the_next_retry_tier_with_a_due_time() -> None:
    pipe, broker = pipeline(TransientError("SMTP down"))
    await pipe.handle(record(welcome().model_dump_json().encode()), attempt=1)

    [sent] = broker.published
    assert sent["topic"] == "p.taskbus.notifier.retry.1"
    assert sent["key"] == b"u1"
    assert sent["headers"]["x-attempt"] == "2"
    assert sent["headers"]["x-error"] == "SMTP down"
    assert sent["headers"]["x-origin-topic"] == "p.taskbus.users"
    assert sent["headers"]["ce_type"] == "user.registered.v1"
    assert int(sent["headers"]["x-not-before-ms"]) > 0


async def test_the_last_attempt_goes_to_the_dlq_with_the_count_and_error() -> None:
    pipe, broker = pipeline(TransientError("still down"))
    await pipe.handle(record(welcome().model_dump_json().encode()), attempt=3)

    [sent] = broker.published
    assert sent["topic"] == "p.taskbus.notifier.dlq"
    assert sent["headers"]["x-dlq-reason"] == "RetriesExhausted"
    assert sent["headers"]["x-dlq-attempts"] == "3"
    assert sent["headers"]["x-error"] == "still down"


async def test_poison_goes_straight_to_the_dlq_byte_for_byte() -> None:
    pipe, broker = pipeline(None)
    await pipe.handle(record(b"\xff not json"), attempt=1)

    [sent] = broker.published
    assert sent["topic"] == "p.taskbus.notifier.dlq"
    assert sent["body"] == b"\xff not json"
    assert sent["headers"]["x-dlq-reason"] == "PoisonMessageError"


async def test_an_unexpected_error_dead_letters_instead_of_stalling() -> None:
    pipe, broker = pipeline(ZeroDivisionError("bug"))
    await pipe.handle(record(welcome().model_dump_json().encode()), attempt=1)

    assert broker.published[0]["headers"]["x-dlq-reason"] == "ZeroDivisionError"


async def test_an_infrastructure_error_escapes_so_the_record_is_read_again() -> None:
    pipe, broker = pipeline(ServerSelectionTimeoutError("mongo down"))
    with pytest.raises(ServerSelectionTimeoutError):
        await pipe.handle(record(welcome().model_dump_json().encode()), attempt=1)
    assert broker.published == []


async def test_a_reset_link_that_expired_while_retrying_is_not_sent() -> None:
    deliverer, store, mailer = make()
    payload = reset_requested("t", datetime.now(UTC) - timedelta(seconds=1), email="u1@x.io")

    outcome = await deliverer.deliver(new_event(payload, source="auth", subject="u1"))

    assert outcome == Outcome.EXPIRED
    assert mailer.sent == []
    assert store.calls == []
