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

from common.events import Envelope
from services.notifier.domain import (
    MAIL_CONSUMER,
    UNCAPPED,
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
        if mail.email is not None and mail.name is not None:
            await self._store.remember_recipient(mail.user_id, mail.email, mail.name)
            address = (mail.email, mail.name)
        else:
            preferences = await self._store.preferences(mail.user_id)
            if not allowed_by(preferences, mail.kind):
                self._metrics.skipped.labels("opted_out").inc()
                return Outcome.OPTED_OUT
            found = await self._store.recipient(mail.user_id)
            if found is None:
                raise TransientError(f"no address known yet for user {mail.user_id}")
            address = found
        s = self._settings
        claim = await self._store.claim(MAIL_CONSUMER, mail.event_id, self._owner, s.claim_lease_s)
        if claim.status == "done":
            self._metrics.duplicates.inc()
            return Outcome.DUPLICATE
        if claim.status == "busy":
            raise TransientError("another notifier holds a live claim on this event")
        if claim.previous == "sending":
            # Its sender died mid-way: if the relay had accepted, this is the one duplicate case.
            log.warning("taking over an expired claim", event_id=mail.event_id)
        if claim.fresh and mail.kind not in UNCAPPED:
            window = window_start(time.time(), s.rate_limit_window_s)
            if not await self._store.take_send_slot(mail.user_id, window, s.rate_limit_count):
                await self._store.finish(MAIL_CONSUMER, mail.event_id, "suppressed", "rate_limited")
                self._metrics.skipped.labels("rate_limited").inc()
                return Outcome.RATE_LIMITED
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
        return Outcome.SENT
