"""One event in, at most one mail out: preferences, recipient, claim, rate cap, send, record.

Ordering, and the residual window. The claim is recorded *before* sending, the result after:

1. claim (insert `sending` with a lease; unique (consumer, event_id)) - a redelivery of a finished
   event stops here; one held by a live lease elsewhere is retried later, never sent twice;
2. send over SMTP;
3. record `sent`.

A crash between 1 and 2 leaves a `sending` claim whose lease expires; the redelivered event then
takes it over and sends (nothing lost). A crash between the relay's 250 and step 3 (one database
round-trip, well under a millisecond of work) cannot be told apart from the previous case, so the
takeover sends again: that mail carries the same Message-ID, which lets the relay and mail clients
collapse it. This is the only duplicate window; the alternative (record before sending) would turn
it into a window of silent loss instead.
"""

import time
import uuid
from enum import StrEnum

import structlog

from common.clock import utcnow
from common.events import Envelope
from services.notifier.domain import (
    MAIL_CONSUMER,
    UNCAPPED,
    Mail,
    PermanentError,
    TransientError,
    allowed_by,
    plan,
    window_start,
)
from services.notifier.mailer import Mailer
from services.notifier.metrics import Metrics
from services.notifier.settings import NotifierSettings
from services.notifier.storage import Store

log = structlog.get_logger(__name__)


class Outcome(StrEnum):
    """What became of an event."""

    SENT = "sent"
    DUPLICATE = "duplicate"
    IGNORED = "ignored"
    OPTED_OUT = "opted_out"
    RATE_LIMITED = "rate_limited"
    EXPIRED = "expired"


class Deliverer:
    """Turns envelopes into sent mails exactly once per event id (see the module docstring)."""

    def __init__(
        self, settings: NotifierSettings, store: Store, mailer: Mailer, metrics: Metrics
    ) -> None:
        self._settings = settings
        self._store = store
        self._mailer = mailer
        self._metrics = metrics
        # Identifies this process's claims, so a release never frees another sender's claim.
        self._owner = f"{settings.service_name}-{uuid.uuid4().hex[:12]}"

    async def deliver(self, envelope: Envelope) -> Outcome:
        """Handle one event; raises TransientError / PermanentError / PoisonMessageError."""
        mail = plan(envelope, self._settings.reset_url_template)
        if mail is None:
            self._metrics.skipped.labels("not_notifying").inc()
            return Outcome.IGNORED
        if mail.is_stale(utcnow()):
            # Retries outlived the link (e.g. SMTP was down past the token's expiry).
            self._metrics.skipped.labels("expired").inc()
            return Outcome.EXPIRED
        address = await self._address(mail)
        if address is None:
            self._metrics.skipped.labels("opted_out").inc()
            return Outcome.OPTED_OUT
        claim = await self._store.claim(
            MAIL_CONSUMER, mail.event_id, self._owner, self._settings.claim_lease_s
        )
        if claim.status == "done":
            self._metrics.duplicates.inc()
            return Outcome.DUPLICATE
        if claim.status == "busy":
            raise TransientError("another notifier holds a live claim on this event")
        if claim.previous == "sending":
            # Its sender died mid-way: if the relay had accepted, this is the one duplicate case.
            log.warning("taking over an expired claim", event_id=mail.event_id)
        if claim.fresh and not await self._within_rate(mail):
            await self._store.finish(MAIL_CONSUMER, mail.event_id, "suppressed", "rate_limited")
            self._metrics.skipped.labels("rate_limited").inc()
            return Outcome.RATE_LIMITED
        await self._send(mail, address)
        return Outcome.SENT

    async def _address(self, mail: Mail) -> tuple[str, str] | None:
        """(email, name) to send to; None when the user opted out of this kind."""
        if mail.email is not None and mail.name is not None:
            # Account events carry the address: keep it for the reminders that do not.
            await self._store.remember_recipient(mail.user_id, mail.email, mail.name)
            return mail.email, mail.name
        if not allowed_by(await self._store.preferences(mail.user_id), mail.kind):
            return None
        found = await self._store.recipient(mail.user_id)
        if found is None:
            raise TransientError(f"no address known yet for user {mail.user_id}")
        return found

    async def _within_rate(self, mail: Mail) -> bool:
        if mail.kind in UNCAPPED:
            return True
        s = self._settings
        window = window_start(time.time(), s.rate_limit_window_s)
        return await self._store.take_send_slot(mail.user_id, window, s.rate_limit_count)

    async def _send(self, mail: Mail, address: tuple[str, str]) -> None:
        """Send under the claim, then record it; a failure hands the claim back."""
        message = self._mailer.render(mail, *address)
        try:
            await self._mailer.send(message)
        except TransientError as exc:
            await self._store.release(
                MAIL_CONSUMER, mail.event_id, self._owner, "retrying", str(exc)
            )
            raise
        except PermanentError as exc:
            await self._store.release(MAIL_CONSUMER, mail.event_id, self._owner, "dead", str(exc))
            raise
        await self._store.finish(MAIL_CONSUMER, mail.event_id, "sent")
        self._metrics.sent.labels(mail.kind).inc()
