"""Rendering (multipart, escaped, fixed Message-ID) and how SMTP failures are classified."""

import asyncio
from typing import Any

import aiosmtplib
import pytest
from aiosmtpd.smtp import SMTP

from services.notifier.domain import Mail, PermanentError, TransientError, message_id
from services.notifier.mailer import Mailer
from services.notifier.settings import NotifierSettings

SETTINGS = NotifierSettings(environment="test", mail_from="Taskbus <noreply@taskbus.test>")


class FakeSMTP:
    """Stands in for aiosmtplib.SMTP: every step succeeds."""

    def __init__(self, **_: object) -> None:
        pass

    async def connect(self) -> None:
        pass

    async def send_message(self, _: object) -> None:
        pass

    async def quit(self) -> None:
        pass

    def close(self) -> None:
        pass


async def never_accepted() -> None:
    raise AssertionError("a refused mail is never recorded as accepted")


async def nothing() -> None:
    pass


def render(kind: str, context: dict[str, Any], name: str = "Ada") -> dict[str, str]:
    mail = Mail(kind, "event-1", "u1", None, None, context)  # type: ignore[arg-type]
    message = Mailer(SETTINGS).render(mail, "ada@example.com", name)
    parts = {
        part.get_content_type(): str(part.get_content())
        for part in message.walk()
        if not part.is_multipart()
    }
    return {**parts, **{k.lower(): str(v) for k, v in message.items()}}


def test_every_kind_renders_a_text_and_an_html_part() -> None:
    contexts: dict[str, dict[str, Any]] = {
        "welcome": {},
        "password_reset": {"reset_url": "https://x/r?token=t", "expires_at": "soon"},
        "reminder": {"title": "Pay rent", "due_at": "soon", "priority": "high", "task_id": "t"},
    }
    for kind, context in contexts.items():
        out = render(kind, context)
        assert out["content-type"].startswith("multipart/alternative")
        # The welcome goes to an unverified address: no account text (tests/security).
        assert ("Ada" in out["text/plain"]) is (kind != "welcome")
        assert ("Ada" in out["text/html"]) is (kind != "welcome")
        assert out["x-taskbus-kind"] == kind


def test_user_text_is_escaped_in_html_and_left_alone_in_text() -> None:
    out = render(
        "reminder",
        {"title": "<script>x</script>", "due_at": "d", "priority": "low", "task_id": "t"},
        name='Eve "<b>"',
    )
    assert "<script>" not in out["text/html"]
    assert "&lt;script&gt;x&lt;/script&gt;" in out["text/html"]
    assert "&lt;b&gt;" in out["text/html"]
    assert '"<script>x</script>"' in out["text/plain"]


def test_headers_carry_recipient_sender_and_the_events_message_id() -> None:
    context = {"reset_url": "https://x/r?token=t", "expires_at": "soon"}
    out = render("password_reset", context, name="Ada\r\nBcc: evil@x.io")
    assert out["to"] == '"Ada Bcc: evil@x.io" <ada@example.com>'
    assert "bcc" not in out
    assert out["from"] == "Taskbus <noreply@taskbus.test>"
    assert out["message-id"] == message_id("event-1", SETTINGS.mail_from)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (aiosmtplib.SMTPConnectError("refused"), TransientError),
        (aiosmtplib.SMTPReadTimeoutError("slow"), TransientError),
        (aiosmtplib.SMTPServerDisconnected("gone"), TransientError),
        (ConnectionRefusedError(), TransientError),
        (aiosmtplib.SMTPDataError(451, "try later"), TransientError),
        (aiosmtplib.SMTPAuthenticationError(535, "bad credentials"), TransientError),
        (aiosmtplib.SMTPDataError(554, "rejected"), PermanentError),
        (
            aiosmtplib.SMTPRecipientsRefused([aiosmtplib.SMTPRecipientRefused(550, "no", "a")]),
            PermanentError,
        ),
        (
            aiosmtplib.SMTPRecipientsRefused([aiosmtplib.SMTPRecipientRefused(452, "full", "a")]),
            TransientError,
        ),
    ],
)
async def test_smtp_failures_are_transient_or_permanent(
    monkeypatch: pytest.MonkeyPatch, error: Exception, expected: type[Exception]
) -> None:
    class Failing(FakeSMTP):
        async def send_message(self, _: object) -> None:
            raise error

    monkeypatch.setattr(aiosmtplib, "SMTP", Failing)
    mailer = Mailer(SETTINGS)
    message = mailer.render(Mail("welcome", "e", "u", None, None, {}), "a@example.com", "A")

    with pytest.raises(expected):
        await mailer.send(message, never_accepted, 5)


async def test_security_and_credentials_reach_the_smtp_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: dict[str, object] = {}

    class Recording(FakeSMTP):
        def __init__(self, **kwargs: object) -> None:
            seen.update(kwargs)

    monkeypatch.setattr(aiosmtplib, "SMTP", Recording)
    settings = NotifierSettings(
        environment="test",
        smtp_host="relay.example",
        smtp_port=587,
        smtp_security="starttls",
        smtp_username="mailer",
        smtp_password="s3cret",  # type: ignore[arg-type]
    )
    mailer = Mailer(settings)
    message = mailer.render(Mail("welcome", "e", "u", None, None, {}), "a@x.io", "A")
    await mailer.send(message, nothing, 5)

    assert seen["hostname"] == "relay.example"
    assert seen["port"] == 587
    assert seen["start_tls"] is True
    assert seen["use_tls"] is False
    assert (seen["username"], seen["password"]) == ("mailer", "s3cret")


class HoldingQuit:
    """aiosmtpd handler: accepts every message, and answers QUIT only once released."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.release = asyncio.Event()

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:  # noqa: N802
        self.events.append("250")
        return "250 accepted"

    async def handle_QUIT(self, server: object, session: object, envelope: object) -> str:  # noqa: N802
        self.events.append("QUIT")
        await self.release.wait()
        return "221 bye"


async def test_the_accepted_callback_runs_on_the_250_before_quit_is_even_sent() -> None:
    handler = HoldingQuit()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(handler), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    mailer = Mailer(NotifierSettings(environment="test", smtp_port=port, smtp_timeout_s=5))
    message = mailer.render(Mail("welcome", "e", "u", None, None, {}), "a@x.io", "A")

    async def accepted() -> None:
        handler.events.append("recorded")
        handler.release.set()

    try:
        await mailer.send(message, accepted, 5)
    finally:
        server.close()
    assert handler.events == ["250", "recorded", "QUIT"]


async def test_a_conversation_past_its_budget_is_abandoned_as_transient() -> None:
    loop = asyncio.get_running_loop()
    # A relay that accepts the connection and never greets: only the overall budget ends it.
    server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    mailer = Mailer(NotifierSettings(environment="test", smtp_port=port, smtp_timeout_s=5))
    message = mailer.render(Mail("welcome", "e", "u", None, None, {}), "a@x.io", "A")

    started = loop.time()
    try:
        with pytest.raises(TransientError, match="Timeout"):
            await mailer.send(message, never_accepted, 0.3)
    finally:
        server.close()
    assert loop.time() - started < 2  # the per-command timeout alone would have waited 5 s
