"""One event in, at most one mail out: preferences, recipient, claim, rate cap, send, record.

Ordering, and the residual window. The claim is recorded *before* sending, the result after:

1. claim (insert `sending` with a lease; unique (consumer, event_id)) - a redelivery of a finished
   event stops here; one held by a live lease elsewhere is retried later, never sent twice;
2. send over SMTP, the whole conversation within `smtp_timeout_s` of the claim, so it is over
   (or abandoned before the relay's answer to the message) while the lease still holds;
   `claim_lease_s - smtp_timeout_s` is left for step 3 and for clock skew between replicas;
3. record `sent` the moment the relay answers 250 to the message, before QUIT and before the
   Kafka offset is committed; a failing write is retried until the lease runs out, and it is
   shielded from cancellation, so a graceful stop never leaves it half done.

A crash between 1 and 2 leaves a `sending` claim whose lease expires; the redelivered event then
takes it over and sends (nothing lost, nothing doubled: the relay never had it). What remains is
the window between the relay's 250 and the database acknowledging `sent`: one write, nothing
else (`taskbus_notifier_accept_to_record_seconds` measures it). A SIGKILL inside it cannot be told
apart from a crash before sending, so the takeover sends again: at most one duplicate per mail in
that window at the kill (one per consumer of the killed process), carrying the same Message-ID,
which lets the relay and mail clients collapse it. Recording before sending would turn it into a
window of silent loss instead. A timeout or dropped connection while the relay holds the message's
last line is the other unknown (RFC 1047): it is retried, so the relay may get it twice.
"""

import asyncio
import time
import uuid
from enum import StrEnum

import structlog
from pymongo.errors import PyMongoError

from common.clock import utcnow
from common.events import Envelope
from common.sealing import Sealer
from services.notifier.domain import (
    MAIL_CONSUMER,
    UNCAPPED,
    Mail,
    PermanentError,
    ResetLinks,
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
# Pause between attempts to record a mail the relay accepted (the lease bounds the attempts).
RECORD_RETRY_S = 0.2


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
        self._links = ResetLinks(
            settings.reset_url_template, Sealer(settings.reset_seal_key.get_secret_value())
        )

    async def deliver(self, envelope: Envelope) -> Outcome:
        """Handle one event; raises TransientError / PermanentError / PoisonMessageError."""
        mail = plan(envelope, self._links)
        if mail is None:
            self._metrics.skipped.labels("not_notifying").inc()
            return Outcome.IGNORED
        if mail.is_stale(utcnow()):
            # Retries outlived the link (e.g. SMTP was down past the token's expiry).
            self._metrics.skipped.labels("expired").inc()
            return Outcome.EXPIRED
        return await self.send(mail)

    async def send(self, mail: Mail) -> Outcome:
        """Send one planned mail once per `mail.event_id`, within preferences and the send cap."""
        address = await self._address(mail)
        if address is None:
            self._metrics.skipped.labels("opted_out").inc()
            return Outcome.OPTED_OUT
        # Read before the claim is written, so this process's idea of the lease ends no later.
        claimed_at = time.monotonic()
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
        await self._send(mail, address, claimed_at)
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

    async def _send(self, mail: Mail, address: tuple[str, str], claimed_at: float) -> None:
        """Send under the claim, recording it on the relay's 250; a failure hands the claim back."""
        s = self._settings
        message = self._mailer.render(mail, *address)
        # Spent budget (a slow claim or rate check) times out at once: a retry, never a late send.
        budget = s.smtp_timeout_s - (time.monotonic() - claimed_at)
        lease_ends = claimed_at + s.claim_lease_s

        async def accepted() -> None:
            # Shielded: a cancellation (shutdown) must not cut the one write that prevents a
            # second copy; the caller still sees the cancellation.
            await asyncio.shield(self._record_sent(mail, lease_ends))

        try:
            await self._mailer.send(message, accepted, budget)
        except TransientError as exc:
            await self._store.release(
                MAIL_CONSUMER, mail.event_id, self._owner, "retrying", str(exc)
            )
            raise
        except PermanentError as exc:
            await self._store.release(MAIL_CONSUMER, mail.event_id, self._owner, "dead", str(exc))
            raise
        self._metrics.sent.labels(mail.kind).inc()

    async def _record_sent(self, mail: Mail, lease_ends: float) -> None:
        """Record `sent`, retrying while the lease keeps every other sender off this event."""
        started = time.monotonic()
        while True:
            try:
                await self._store.finish(MAIL_CONSUMER, mail.event_id, "sent")
                break
            except PyMongoError:
                if time.monotonic() + RECORD_RETRY_S >= lease_ends:
                    raise  # past the lease a takeover may send it again (the residual window)
                log.warning("recording a sent mail failed; trying again", event_id=mail.event_id)
                await asyncio.sleep(RECORD_RETRY_S)
        self._metrics.accept_to_record.observe(time.monotonic() - started)
