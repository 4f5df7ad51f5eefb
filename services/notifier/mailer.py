"""Rendering mails from Jinja2 templates and handing them to the SMTP relay."""

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from email.message import EmailMessage
from email.utils import formataddr, formatdate
from pathlib import Path

import aiosmtplib
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from services.notifier.domain import Mail, PermanentError, TransientError, message_id, subject
from services.notifier.settings import NotifierSettings

TEMPLATES = Path(__file__).parent / "templates"
# Kinds mailed to an address before its owner has acted on anything: no user-chosen text.
UNVERIFIED_KINDS = frozenset({"welcome"})
_tracer = trace.get_tracer(__name__)
# Called once the relay has accepted a message (its 250), before QUIT.
Accepted = Callable[[], Awaitable[None]]


def template_env() -> Environment:
    """HTML templates autoescape; plain-text ones do not (escaping would corrupt them)."""
    return Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
    )


class Mailer:
    """Renders a Mail into a multipart message and sends it."""

    def __init__(self, settings: NotifierSettings) -> None:
        self._settings = settings
        self._env = template_env()

    def render(self, mail: Mail, email: str, name: str) -> EmailMessage:
        """A text/plain + text/html alternative message with a Message-ID fixed by the event."""
        # A welcome goes to an address nobody has verified: none of the account's text in it.
        name = "" if mail.kind in UNVERIFIED_KINDS else name
        title = subject(mail, name)
        context = {**mail.context, "name": name, "subject": title}
        message = EmailMessage()
        message["From"] = self._settings.mail_from
        message["To"] = formataddr((" ".join(name.split()), email))
        message["Subject"] = title
        message["Date"] = formatdate(localtime=False, usegmt=True)
        message["Message-ID"] = message_id(mail.event_id, self._settings.mail_from)
        message["X-Taskbus-Kind"] = mail.kind
        message["Auto-Submitted"] = "auto-generated"
        message.set_content(self._env.get_template(f"{mail.kind}.txt").render(context))
        message.add_alternative(
            self._env.get_template(f"{mail.kind}.html").render(context), subtype="html"
        )
        return message

    async def send(self, message: EmailMessage, accepted: Accepted, within_s: float) -> None:
        """Send; `accepted` runs the moment the relay answers 250 to the message, before QUIT.

        The conversation up to that 250 must end within `within_s` (the caller's lease budget).
        TransientError when trying again later may help, PermanentError when it cannot; an error
        of `accepted` itself propagates unchanged (the mail is out, the record is not).
        """
        s = self._settings
        attributes: dict[str, str | int] = {
            "server.address": s.smtp_host,
            "server.port": s.smtp_port,
            "email.message_id": str(message["Message-ID"]),
        }
        client = aiosmtplib.SMTP(
            hostname=s.smtp_host,
            port=s.smtp_port,
            username=s.smtp_username,
            password=s.smtp_password.get_secret_value() if s.smtp_password else None,
            use_tls=s.smtp_security == "tls",
            start_tls=s.smtp_security == "starttls",
            timeout=s.smtp_timeout_s,
        )
        try:
            # The last hop of a request's trace: the relay accepting the mail.
            with _tracer.start_as_current_span(
                "smtp send", kind=SpanKind.CLIENT, attributes=attributes
            ):
                await _transmit(client, message, within_s)
                # Nothing between the relay's 250 and this call: it is the window in which a
                # crash sends the mail twice, so QUIT and closing come after it.
                await accepted()
            with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
                await client.quit()
        finally:
            client.close()


async def _transmit(client: aiosmtplib.SMTP, message: EmailMessage, within_s: float) -> None:
    """Connect and send up to the relay's 250, classifying what went wrong."""
    try:
        # One deadline for the whole conversation: per-command timeouts alone could add up past
        # the claim's lease, and another replica would then send the same mail.
        async with asyncio.timeout(within_s):
            await client.connect()
            await client.send_message(message)
    except aiosmtplib.SMTPRecipientsRefused as exc:
        codes = [refused.code for refused in exc.recipients]
        if codes and all(code >= 500 for code in codes):
            raise PermanentError(f"recipient refused: {codes}") from exc
        raise TransientError(f"recipient deferred: {codes}") from exc
    except aiosmtplib.SMTPResponseException as exc:
        # 5xx is the relay's final word on this message; 4xx (and auth trouble) may pass.
        if exc.code >= 500 and not isinstance(exc, aiosmtplib.SMTPAuthenticationError):
            raise PermanentError(f"SMTP {exc.code}: {exc.message}"[:300]) from exc
        raise TransientError(f"SMTP {exc.code}: {exc.message}"[:300]) from exc
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        # A timeout or a dropped connection after the message's last line leaves its fate
        # unknown: it is retried, so at worst the relay gets it twice with one Message-ID.
        raise TransientError(f"{type(exc).__name__}: {exc}"[:300]) from exc
