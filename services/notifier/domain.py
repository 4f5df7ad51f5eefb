"""What the notifier sends for which event, and the rules around it (no I/O here)."""

import hashlib
import random
import re
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parseaddr
from typing import Any, Literal
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, StrictBool, ValidationError

from common.events import (
    PAYLOAD_TYPES,
    Envelope,
    PasswordResetRequested,
    TaskDueSoon,
    UserRegistered,
)
from common.sealing import Sealer, SealError, reset_context

# "notice": the template producers may send (notification.send.v1, services/notifier/commands.py).
Kind = Literal["welcome", "password_reset", "reminder", "notice"]
# The logical consumer recorded with every event id: one event yields at most one mail.
MAIL_CONSUMER = "notifier.mail"
# Kinds that never count against the per-user rate cap (one per account, by construction).
UNCAPPED: frozenset[Kind] = frozenset({"welcome"})
_SPACE = re.compile(r"\s+")


class PoisonMessageError(Exception):
    """The record can never be processed (not an envelope, or a payload that breaks its schema)."""


class TransientError(Exception):
    """Processing may succeed later (SMTP down, recipient not known yet, claimed elsewhere)."""


class PermanentError(Exception):
    """Processing will never succeed for this event (e.g. the relay rejects the mailbox)."""


class Preferences(BaseModel):
    """A user's notification choices; welcome and password-reset mails are not optional."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    # Strict: lax parsing would take 0 or "yes" for a boolean the schema says it is.
    reminders: StrictBool = True
    # Mails that other systems send through Taskbus (notification.send.v1).
    notices: StrictBool = True


@dataclass(frozen=True)
class Mail:
    """One mail to send for one event; `email` is None when the directory must supply it."""

    kind: Kind
    event_id: str
    user_id: str
    email: str | None
    name: str | None
    context: dict[str, Any] = field(default_factory=dict)
    # Past this moment the mail is pointless (a reset link that no longer works).
    useless_after: datetime | None = None

    def is_stale(self, now: datetime) -> bool:
        """True when sending now would only deliver something that cannot be used."""
        return self.useless_after is not None and now >= self.useless_after


def decode(raw: bytes | None) -> Envelope:
    """Parse a record value as an envelope; anything else is poison."""
    if not raw:
        raise PoisonMessageError("empty record")
    try:
        return Envelope.model_validate_json(raw)
    except ValidationError as exc:
        raise PoisonMessageError(f"not a valid envelope: {_short(exc)}") from exc


NOTIFYING_TYPES = frozenset(
    {UserRegistered.event_type, PasswordResetRequested.event_type, TaskDueSoon.event_type}
)


@dataclass(frozen=True)
class ResetLinks:
    """How a reset link is made: the URL template, and the key the token is sealed with."""

    template: str
    sealer: Sealer

    def url(self, payload: PasswordResetRequested) -> str:
        """The link with the unsealed token; PoisonMessageError if it cannot be unsealed."""
        context = reset_context(payload.user_id, payload.email, payload.expires_at)
        try:
            token = self.sealer.open(payload.sealed_token, context)
        except SealError as exc:
            raise PoisonMessageError("reset token sealed with another key or context") from exc
        return reset_link(self.template, token)


def plan(envelope: Envelope, links: ResetLinks) -> Mail | None:
    """The mail this event calls for, or None when it calls for none."""
    if envelope.type not in PAYLOAD_TYPES:
        # Not a type this build knows (a new version, a typo): parked on the DLQ to be replayed
        # after an upgrade, rather than passed over and never mailed.
        raise PoisonMessageError(f"unknown event type {envelope.type!r}")
    if envelope.type not in NOTIFYING_TYPES:
        return None
    try:
        payload = envelope.payload()
    except ValidationError as exc:
        raise PoisonMessageError(f"invalid {envelope.type} payload: {_short(exc)}") from exc
    if isinstance(payload, UserRegistered):
        return Mail(
            "welcome",
            envelope.id,
            payload.user_id,
            payload.email,
            payload.name,
            {"name": payload.name},
        )
    if isinstance(payload, PasswordResetRequested):
        context = {
            "name": payload.name,
            "reset_url": links.url(payload),
            "expires_at": _format_time(payload.expires_at),
        }
        return Mail(
            "password_reset",
            envelope.id,
            payload.user_id,
            payload.email,
            payload.name,
            context,
            useless_after=payload.expires_at,
        )
    if isinstance(payload, TaskDueSoon):
        return _reminder(envelope, payload)
    return None


def _reminder(envelope: Envelope, payload: TaskDueSoon) -> Mail | None:
    task = payload.task
    if task.status == "done" or task.due_at is None:
        return None  # finished meanwhile, or the due date was removed
    context = {
        "title": task.title,
        "due_at": _format_time(task.due_at),
        "priority": task.priority,
        "task_id": task.id,
    }
    return Mail("reminder", envelope.id, task.owner, None, None, context)


def notice(mail_id: str, user_id: str, subject_line: str, message: str) -> Mail:
    """The mail of a notification.send.v1 (template `notice`), to the directory's address."""
    return Mail(
        "notice", mail_id, user_id, None, None, {"subject": subject_line, "message": message}
    )


def allowed_by(preferences: Preferences, kind: Kind) -> bool:
    """Whether the user's preferences let this kind of mail through."""
    if kind == "reminder":
        return preferences.reminders
    return preferences.notices if kind == "notice" else True


def subject(mail: Mail, name: str) -> str:
    """The subject line, on one line whatever the user-supplied parts contain."""
    if mail.kind == "welcome":
        text = "Welcome to Taskbus"  # no account text: the address is unverified
    elif mail.kind == "password_reset":
        text = "Reset your Taskbus password"
    elif mail.kind == "notice":
        text = mail.context["subject"]
    else:
        text = f"Reminder: {mail.context['title']} is due soon"
    return _SPACE.sub(" ", text).strip()[:200]


def reset_link(template: str, token: str) -> str:
    """The reset URL with the token URL-encoded into it."""
    return template.replace("{token}", quote(token, safe=""))


def message_id(event_id: str, mail_from: str) -> str:
    """A Message-ID fixed by the event, so a re-send after a crash is recognisably the same mail."""
    domain = parseaddr(mail_from)[1].rpartition("@")[2] or "taskbus.local"
    digest = hashlib.sha256(f"{MAIL_CONSUMER}:{event_id}".encode()).hexdigest()[:32]
    return f"<{digest}@{domain}>"


def backoff_s(base: float, factor: float, tier: int, jitter: float, rng: random.Random) -> float:
    """Exponential delay for retry tier `tier`, spread by +/- `jitter` so retries do not herd."""
    nominal = base * factor**tier
    return max(0.0, nominal * (1 + rng.uniform(-jitter, jitter)))


def window_start(now_s: float, window_s: int) -> int:
    """The start of the fixed rate-limit window containing `now_s`."""
    return int(now_s // window_s * window_s)


def _format_time(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M %Z").strip()


def _short(exc: ValidationError) -> str:
    errors = exc.errors()
    if not errors:
        return "invalid"
    loc = ".".join(str(part) for part in errors[0]["loc"]) or "root"
    return f"{exc.error_count()} error(s), first at {loc}: {errors[0]['msg']}"[:300]
