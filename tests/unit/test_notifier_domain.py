"""Which event makes which mail, and the rules around it."""

import random
from datetime import UTC, datetime, timedelta

import pytest

from common.events import (
    Envelope,
    SessionsRevoked,
    TaskCreated,
    TaskDueSoon,
    TaskSnapshot,
    TaskUpdated,
    UserRegistered,
    new_event,
)
from common.sealing import DEV_RESET_SEAL_KEY, Sealer
from services.notifier.domain import (
    Mail,
    PoisonMessageError,
    Preferences,
    ResetLinks,
    allowed_by,
    backoff_s,
    decode,
    message_id,
    plan,
    reset_link,
    subject,
    window_start,
)
from tests.support.resets import reset_requested

URL_TEMPLATE = "https://app.test/reset?token={token}"
TEMPLATE = ResetLinks(URL_TEMPLATE, Sealer(DEV_RESET_SEAL_KEY))
NOW = datetime.now(UTC)


def task(status: str = "todo", due: datetime | None = NOW) -> TaskSnapshot:
    return TaskSnapshot(
        id="t1",
        owner="u1",
        title="Pay\nrent",
        status=status,  # type: ignore[arg-type]
        priority="high",
        due_at=due,
        version=1,
    )


def test_registration_plans_a_welcome_to_the_new_address() -> None:
    event = new_event(
        UserRegistered(user_id="u1", email="a@x.io", name="Ada"), source="a", subject="u1"
    )

    mail = plan(event, TEMPLATE)

    assert mail == Mail("welcome", event.id, "u1", "a@x.io", "Ada", {"name": "Ada"})


def test_reset_request_plans_a_link_with_the_encoded_token() -> None:
    payload = reset_requested("a/b+c", NOW)
    mail = plan(new_event(payload, source="a", subject="u1"), TEMPLATE)

    assert mail is not None
    assert mail.kind == "password_reset"
    assert mail.context["reset_url"] == "https://app.test/reset?token=a%2Fb%2Bc"
    assert mail.context["reset_url"] == "https://app.test/reset?token=a%2Fb%2Bc"


def test_due_soon_plans_a_reminder_whose_address_comes_from_the_directory() -> None:
    mail = plan(new_event(TaskDueSoon(task=task()), source="t", subject="u1"), TEMPLATE)

    assert mail is not None
    assert (mail.kind, mail.user_id, mail.email) == ("reminder", "u1", None)


@pytest.mark.parametrize("snapshot", [task(status="done"), task(due=None)])
def test_no_reminder_for_a_finished_or_undated_task(snapshot: TaskSnapshot) -> None:
    assert plan(new_event(TaskDueSoon(task=snapshot), source="t", subject="u1"), TEMPLATE) is None


@pytest.mark.parametrize(
    "payload",
    [
        TaskCreated(task=task()),
        TaskUpdated(task=task(), changed=("title",)),
        SessionsRevoked(user_id="u1", revoked_before=NOW, reason="logout"),
    ],
)
def test_other_events_call_for_no_mail(payload: object) -> None:
    event = new_event(payload, source="s", subject="u1")  # type: ignore[arg-type]
    assert plan(event, TEMPLATE) is None


def test_event_types_this_build_does_not_know_are_poison_for_the_dlq() -> None:
    event = Envelope(id="1", source="s", type="task.archived.v9", time=NOW, subject="u", data={})
    with pytest.raises(PoisonMessageError, match=r"unknown event type 'task\.archived\.v9'"):
        plan(event, TEMPLATE)


@pytest.mark.parametrize("raw", [b"", b"not json", b'{"id": "1"}', b"[1,2]"])
def test_undecodable_records_are_poison(raw: bytes) -> None:
    with pytest.raises(PoisonMessageError):
        decode(raw)


def test_a_known_type_with_a_broken_payload_is_poison() -> None:
    event = Envelope(
        id="1", source="s", type="user.registered.v1", time=NOW, subject="u", data={"x": 1}
    )
    with pytest.raises(PoisonMessageError, match=r"invalid user\.registered\.v1 payload"):
        plan(event, TEMPLATE)


def test_reminders_can_be_turned_off_but_account_mails_cannot() -> None:
    off = Preferences(reminders=False)
    assert not allowed_by(off, "reminder")
    assert allowed_by(off, "welcome")
    assert allowed_by(off, "password_reset")


def test_subject_stays_on_one_line_whatever_the_title() -> None:
    mail = Mail("reminder", "e", "u", None, None, {"title": "Pay\r\nBcc: x@y.z\n rent"})
    assert subject(mail, "Ada") == "Reminder: Pay Bcc: x@y.z rent is due soon"


def test_message_id_is_fixed_by_the_event() -> None:
    first = message_id("event-1", "Taskbus <noreply@mail.taskbus.io>")
    assert first == message_id("event-1", "noreply@mail.taskbus.io")
    assert first != message_id("event-2", "noreply@mail.taskbus.io")
    assert first.startswith("<")
    assert first.endswith("@mail.taskbus.io>")


def test_backoff_grows_exponentially_within_the_jitter() -> None:
    rng = random.Random(7)
    for tier in range(5):
        nominal = 2.0 * 3**tier
        delays = [backoff_s(2.0, 3.0, tier, 0.2, rng) for _ in range(50)]
        assert all(nominal * 0.8 <= d <= nominal * 1.2 for d in delays)
        assert len(set(delays)) > 1


def test_rate_window_is_fixed() -> None:
    assert window_start(7265.5, 3600) == 7200
    assert window_start(7199.9, 3600) == 3600


def test_reset_link_token_cannot_break_out_of_the_query() -> None:
    assert (
        reset_link(URL_TEMPLATE, "x&admin=1#y") == "https://app.test/reset?token=x%26admin%3D1%23y"
    )


def test_expiry_is_rendered_in_utc() -> None:
    payload = reset_requested("t", datetime(2030, 1, 2, 3, 4, tzinfo=UTC) + timedelta(0))
    mail = plan(new_event(payload, source="a", subject="u1"), TEMPLATE)
    assert mail is not None
    assert mail.context["expires_at"] == "2030-01-02 03:04 UTC"


def test_a_reset_token_sealed_with_another_key_or_for_another_account_is_poison() -> None:
    other_key = reset_requested("t", NOW, key="another key, another deployment, 32+ chars")
    with pytest.raises(PoisonMessageError, match="sealed"):
        plan(new_event(other_key, source="a", subject="u1"), TEMPLATE)
    moved = reset_requested("t", NOW).model_copy(update={"email": "mallory@x.io"})
    with pytest.raises(PoisonMessageError, match="sealed"):
        plan(new_event(moved, source="a", subject="u1"), TEMPLATE)
