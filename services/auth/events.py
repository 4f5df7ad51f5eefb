"""The events auth publishes, queued in outboxes, and the relay that publishes them.

Auth only publishes (user.registered, password_reset_requested, sessions_revoked on the users
topic); it subscribes to nothing. Delivery is at least once: a crash between the broker's ack and
the removal republishes the same event id, which consumers deduplicate.
"""

import functools
from datetime import datetime

from faststream.kafka import KafkaBroker
from pymongo.asynchronous.database import AsyncDatabase

from common.events import Payload, RevokeReason, SessionsRevoked, new_event
from common.kafka import publish
from common.outbox import Doc, OutboxEntry, entry
from common.relay import OutboxRelay
from common.telemetry import current_traceparent
from services.auth.sessions_store import MongoSessions
from services.auth.settings import AuthSettings
from services.auth.users import MongoUsers

EVENT_SOURCE = "/taskbus/auth"


def queued(payload: Payload, user_id: str) -> OutboxEntry:
    """An outbox entry carrying the current request's trace, keyed by the user."""
    event = new_event(
        payload, source=EVENT_SOURCE, subject=user_id, traceparent=current_traceparent()
    )
    return entry(payload.topic, event)


def revoked_event(user_id: str, reason: RevokeReason, now: datetime, *sids: str) -> OutboxEntry:
    """A user.sessions_revoked outbox entry: the named sessions, or all of them when none is named.

    A user-wide cut-off is `now` in whole ms (floored, as the database stores it): every token of
    a session begun before it is refused (tokens carry their session's start, `sst`, in ms), so
    a refresh of an old session in the same second is refused too, while the new login after
    logout-all, or the replacement session of a password change, begins at or after it.
    """
    before = now.replace(microsecond=now.microsecond // 1000 * 1000)
    payload = SessionsRevoked(
        user_id=user_id, session_ids=sids, revoked_before=before, reason=reason
    )
    return queued(payload, user_id)


def outbox_relay(
    db: AsyncDatabase[Doc],
    users: MongoUsers,
    sessions: MongoSessions,
    broker: KafkaBroker,
    settings: AuthSettings,
) -> OutboxRelay:
    """The relay over the users' and sessions' outboxes, publishing to Kafka."""
    return OutboxRelay(
        [users.outbox_source(), sessions.outbox_source()],
        functools.partial(publish, broker, settings),
        db["outbox_leases"],
        service="auth",
        interval_s=settings.relay_poll_s,
    )
