"""The notifier against real Kafka, FerretDB and the SMTP sink: one app per module, in-process."""

import io
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage

import httpx
import pytest
from faststream.kafka import KafkaBroker
from pymongo import AsyncMongoClient

from common.events import (
    NOTIFIER_DLQ_TOPIC,
    TASKS_TOPIC,
    USERS_TOPIC,
    Envelope,
    SessionsRevoked,
    TaskCompleted,
    TaskDueSoon,
    TaskSnapshot,
    UserRegistered,
    new_event,
)
from common.infra import open_broker
from common.kafka import publish
from common.metrics import MetricsMiddleware
from services.notifier.app import create_app
from services.notifier.dlq import list_letters, replay
from services.notifier.domain import MAIL_CONSUMER
from services.notifier.events import notifier_topics, retry_topic
from services.notifier.settings import NotifierSettings
from tests.support.infra import KAFKA_BOOTSTRAP, MONGO_URL, SMTP_PORT
from tests.support.kafka import Record, read_records
from tests.support.mail import MailBox
from tests.support.metrics import metric_sum
from tests.support.resets import reset_requested
from tests.support.tokens import SigningKey
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration
MAIL = MailBox()


@pytest.fixture(scope="module")
def signing_key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture(scope="module")
def settings(signing_key: SigningKey) -> NotifierSettings:
    prefix = f"n{uuid.uuid4().hex[:10]}"
    return NotifierSettings(
        environment="test",
        kafka_bootstrap=KAFKA_BOOTSTRAP,
        topic_prefix=f"{prefix}.",
        mongo_url=MONGO_URL,
        mongo_db=f"{prefix}_notifier",
        smtp_port=SMTP_PORT,
        smtp_timeout_s=2,
        claim_lease_s=4,
        retry_tiers=2,
        retry_base_delay_s=0.3,
        retry_factor=2,
        rate_limit_count=3,
        jwks_json=json.dumps(signing_key.jwks()),
        reset_url_template="https://app.taskbus.test/reset?token={token}",
    )


@pytest.fixture(scope="module")
async def client(settings: NotifierSettings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        # The runner wraps every service like this; /metrics is served by the wrapper.
        transport = httpx.ASGITransport(app=MetricsMiddleware(app, settings.service_name))
        async with httpx.AsyncClient(transport=transport, base_url="http://notifier") as http:
            yield http


@pytest.fixture(scope="module")
async def producer(
    settings: NotifierSettings, client: httpx.AsyncClient
) -> AsyncIterator[KafkaBroker]:
    async with open_broker(settings, [USERS_TOPIC, TASKS_TOPIC]) as broker:
        yield broker


def registered(email: str, user_id: str | None = None, name: str = "Ada") -> Envelope:
    user_id = user_id or uuid.uuid4().hex
    payload = UserRegistered(user_id=user_id, email=email, name=name)
    return new_event(payload, source="auth", subject=user_id)


def due_soon(user_id: str, title: str, status: str = "todo") -> Envelope:
    task = TaskSnapshot(
        id=uuid.uuid4().hex,
        owner=user_id,
        title=title,
        status=status,  # type: ignore[arg-type]
        priority="high",
        due_at=datetime.now(UTC) + timedelta(hours=1),
        version=1,
    )
    return new_event(TaskDueSoon(task=task), source="tasks", subject=user_id)


async def metric(client: httpx.AsyncClient, name: str, **labels: str) -> float:
    """The current value of a sample (summed over the other labels)."""
    return metric_sum((await client.get("/metrics")).text, name, **labels)


async def wait_for_metric(
    client: httpx.AsyncClient, name: str, at_least: float, within: float = 20.0, **labels: str
) -> None:
    """Poll /metrics until the sample reaches `at_least`."""

    async def reached() -> bool:
        return await metric(client, name, **labels) >= at_least

    await eventually(reached, within)


def parts(message: EmailMessage) -> dict[str, str]:
    return {
        part.get_content_type(): str(part.get_content())
        for part in message.walk()
        if not part.is_multipart()
    }


async def test_registration_sends_a_multipart_welcome_to_the_user(
    settings: NotifierSettings, producer: KafkaBroker, prefix: str
) -> None:
    email = f"{prefix}@example.com"
    await publish(producer, settings, USERS_TOPIC, registered(email, name="Ada <Lovelace>"))

    [mail] = await MAIL.wait(email)
    assert email in mail["To"]
    # No account text in mail to an unverified address (tests/security/test_unverified_mail.py).
    assert mail["Subject"] == "Welcome to Taskbus"
    body = parts(mail)
    assert set(body) == {"text/plain", "text/html"}
    assert "Lovelace" not in mail.as_string()


async def test_the_same_event_twice_sends_one_mail(
    settings: NotifierSettings, producer: KafkaBroker, prefix: str
) -> None:
    email = f"{prefix}@example.com"
    event = registered(email)
    await publish(producer, settings, USERS_TOPIC, event)
    await publish(producer, settings, USERS_TOPIC, event)
    # A later event of the same user (same partition) proves both copies were consumed.
    marker = f"{prefix}-marker@example.com"
    await publish(producer, settings, USERS_TOPIC, registered(marker, user_id=event.subject))

    await MAIL.wait(marker)
    assert len(MAIL.to(email)) == 1


async def test_reset_request_mails_a_link_built_from_the_template(
    settings: NotifierSettings, producer: KafkaBroker, prefix: str
) -> None:
    email = f"{prefix}@example.com"
    expires = datetime.now(UTC) + timedelta(minutes=30)
    payload = reset_requested("tok/en+1", expires, user_id="u-reset", email=email, name="Bo")
    await publish(producer, settings, USERS_TOPIC, new_event(payload, source="auth", subject="u"))

    [mail] = await MAIL.wait(email)
    link = "https://app.taskbus.test/reset?token=tok%2Fen%2B1"
    assert link in parts(mail)["text/plain"]
    assert f'href="{link}"' in parts(mail)["text/html"]


async def test_malformed_record_goes_to_the_dlq_and_later_events_still_arrive(
    settings: NotifierSettings, producer: KafkaBroker, prefix: str
) -> None:
    user_id = f"{prefix}-user"
    topic = settings.topic(USERS_TOPIC)
    poison = f"{prefix} this is not an envelope".encode()
    await producer.publish(poison, topic=topic, key=user_id.encode())
    bad_payload = registered("x@example.com", user_id=user_id).model_copy(
        update={"data": {"user_id": user_id}}
    )
    await publish(producer, settings, USERS_TOPIC, bad_payload)
    email = f"{prefix}@example.com"
    await publish(producer, settings, USERS_TOPIC, registered(email, user_id=user_id))

    await MAIL.wait(email)

    def both(records: list[Record]) -> bool:
        return any(v == poison for v, _ in records) and any(
            bad_payload.id.encode() in v for v, _ in records
        )

    found = await read_records(settings.topic(NOTIFIER_DLQ_TOPIC), both)
    [poisoned] = [h for v, h in found if v == poison]
    assert poisoned["x-dlq-reason"] == "PoisonMessageError"
    assert poisoned["x-dlq-attempts"] == "1"
    assert poisoned["x-origin-topic"] == topic
    [invalid] = [h for v, h in found if bad_payload.id.encode() in v]
    assert "invalid user.registered.v1 payload" in invalid["x-error"]


async def test_reminder_goes_to_the_registered_address_unless_opted_out(
    settings: NotifierSettings,
    producer: KafkaBroker,
    client: httpx.AsyncClient,
    signing_key: SigningKey,
    prefix: str,
) -> None:
    user_id = f"{prefix}-user"
    email = f"{prefix}@example.com"
    await publish(producer, settings, USERS_TOPIC, registered(email, user_id=user_id))
    await MAIL.wait(email)
    await publish(producer, settings, TASKS_TOPIC, due_soon(user_id, "<b>Pay rent</b>"))

    [reminder] = [m for m in await MAIL.wait(email, count=2) if m["X-Taskbus-Kind"] == "reminder"]
    assert reminder["Subject"] == "Reminder: <b>Pay rent</b> is due soon"
    assert "&lt;b&gt;Pay rent&lt;/b&gt;" in parts(reminder)["text/html"]

    token, _ = signing_key.mint(user_id)
    auth = {"Authorization": f"Bearer {token}"}
    response = await client.put(
        "/api/notifications/preferences", json={"reminders": False}, headers=auth
    )
    assert response.status_code == 200
    skipped = "taskbus_notifier_skipped_total"
    skipped_before = await metric(client, skipped, reason="opted_out")
    await publish(producer, settings, TASKS_TOPIC, due_soon(user_id, "muted"))
    await publish(producer, settings, TASKS_TOPIC, due_soon(user_id, "already done", "done"))
    # Opt back in only once the muted reminder was handled (and skipped).
    await wait_for_metric(client, skipped, skipped_before + 1, reason="opted_out")
    await client.put("/api/notifications/preferences", json={"reminders": True}, headers=auth)
    await publish(producer, settings, TASKS_TOPIC, due_soon(user_id, "after opt-in"))

    mails = await MAIL.wait(email, count=3)
    assert sorted(m["Subject"] for m in mails if m["X-Taskbus-Kind"] == "reminder") == [
        "Reminder: <b>Pay rent</b> is due soon",
        "Reminder: after opt-in is due soon",
    ]


async def test_events_that_call_for_no_mail_are_passed_over(
    settings: NotifierSettings, producer: KafkaBroker, prefix: str
) -> None:
    user_id = f"{prefix}-user"
    revoked = SessionsRevoked(user_id=user_id, revoked_before=datetime.now(UTC), reason="logout")
    await publish(producer, settings, USERS_TOPIC, new_event(revoked, source="a", subject=user_id))
    completed = due_soon(user_id, "x").payload()
    assert isinstance(completed, TaskDueSoon)
    done = TaskCompleted(task=completed.task)
    await publish(producer, settings, TASKS_TOPIC, new_event(done, source="t", subject=user_id))
    email = f"{prefix}@example.com"
    await publish(producer, settings, USERS_TOPIC, registered(email, user_id=user_id))

    [only] = await MAIL.wait(email)
    assert only["Subject"].startswith("Welcome")


async def test_per_user_rate_cap_suppresses_reminders_beyond_it(
    settings: NotifierSettings, producer: KafkaBroker, prefix: str
) -> None:
    user_id = f"{prefix}-user"
    email = f"{prefix}@example.com"
    await publish(producer, settings, USERS_TOPIC, registered(email, user_id=user_id))
    await MAIL.wait(email)
    events = [due_soon(user_id, f"task {n}") for n in range(settings.rate_limit_count + 2)]
    for event in events:
        await publish(producer, settings, TASKS_TOPIC, event)

    await MAIL.wait(email, count=1 + settings.rate_limit_count)
    mongo: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(MONGO_URL)
    try:
        deliveries = mongo[settings.mongo_db]["deliveries"]
        suppressed = {"event_id": {"$in": [e.id for e in events]}, "state": "suppressed"}

        async def both_suppressed() -> bool:
            return await deliveries.count_documents(suppressed) >= 2

        await eventually(both_suppressed, 20)
        states = [
            (await deliveries.find_one({"consumer": MAIL_CONSUMER, "event_id": e.id}) or {}).get(
                "state"
            )
            for e in events
        ]
    finally:
        await mongo.close()
    assert states.count("sent") == settings.rate_limit_count
    assert states.count("suppressed") == 2
    assert len(MAIL.to(email)) == 1 + settings.rate_limit_count


async def test_reminder_for_an_unknown_user_is_dead_lettered_then_replayed(
    settings: NotifierSettings, producer: KafkaBroker, prefix: str
) -> None:
    user_id = f"{prefix}-user"
    email = f"{prefix}@example.com"
    reminder = due_soon(user_id, "orphan")
    await publish(producer, settings, TASKS_TOPIC, reminder)

    def parked(records: list[Record]) -> bool:
        return any(reminder.id.encode() in value for value, _ in records)

    found = await read_records(settings.topic(NOTIFIER_DLQ_TOPIC), parked)
    [headers] = [h for v, h in found if reminder.id.encode() in v]
    assert headers["x-dlq-reason"] == "RetriesExhausted"
    assert headers["x-dlq-attempts"] == str(1 + settings.retry_tiers)
    assert "no address known" in headers["x-error"]
    listing = io.StringIO()
    await list_letters(settings, listing)
    [entry] = [
        e for e in map(json.loads, listing.getvalue().splitlines()) if e["event_id"] == reminder.id
    ]
    assert entry["type"] == "task.due_soon.v1"
    assert entry["replayed"] is False

    await publish(producer, settings, USERS_TOPIC, registered(email, user_id=user_id))
    await MAIL.wait(email)
    assert await replay(settings, [reminder.id], io.StringIO()) == 1

    mails = await MAIL.wait(email, count=2)
    assert sorted(m["X-Taskbus-Kind"] for m in mails) == ["reminder", "welcome"]


async def test_bulk_replay_requeues_each_dead_letter_once(prefix: str) -> None:
    settings = NotifierSettings(
        environment="test", kafka_bootstrap=KAFKA_BOOTSTRAP, topic_prefix=f"{prefix}."
    )
    event = registered(f"{prefix}@example.com")
    async with open_broker(settings, notifier_topics(settings)) as broker:
        await broker.publish(
            event.model_dump_json().encode(),
            topic=settings.topic(NOTIFIER_DLQ_TOPIC),
            key=event.key,
            headers={"ce_id": event.id, "x-dlq-reason": "RetriesExhausted"},
        )

    assert await replay(settings, [], io.StringIO()) == 1
    assert await replay(settings, [], io.StringIO()) == 0
    requeued = await read_records(settings.topic(retry_topic(0)), lambda records: len(records) >= 1)
    [(value, headers)] = requeued
    assert Envelope.model_validate_json(value).id == event.id
    assert headers["x-attempt"] == "2"
    assert "x-dlq-reason" not in headers
