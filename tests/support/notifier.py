"""Notifier processes and their ledger for the fault tests: own processes, own database."""

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from faststream.kafka import KafkaBroker
from pymongo import AsyncMongoClient

from common.events import USERS_TOPIC, Envelope, UserRegistered, new_event
from common.infra import open_broker
from services.notifier.domain import MAIL_CONSUMER, message_id
from services.notifier.settings import DEV_MAIL_FROM, NotifierSettings
from tests.support.infra import KAFKA_BOOTSTRAP, MONGO_URL, STATE_DIR, free_port, infra_env
from tests.support.processes import ServiceProcess

# Short lease and fast retries, so a takeover after a kill happens within seconds.
FAST = {
    "NOTIFIER_RETRY_TIERS": "6",
    "NOTIFIER_RETRY_BASE_DELAY_S": "0.5",
    "NOTIFIER_RETRY_FACTOR": "2",
    "NOTIFIER_SMTP_TIMEOUT_S": "2",
    "NOTIFIER_CLAIM_LEASE_S": "4",
    "NOTIFIER_CONSUMER_SESSION_TIMEOUT_MS": "6000",
    "TASKBUS_KAFKA_PARTITIONS": "6",
}


def notifier_process(prefix: str, name: str, smtp_port: int) -> ServiceProcess:
    """A notifier process of the test `prefix`, sending to `smtp_port` (not started)."""
    port = free_port()
    env = {**infra_env(prefix), **FAST, "NOTIFIER_PORT": str(port)}
    env["NOTIFIER_SMTP_PORT"] = str(smtp_port)
    log = STATE_DIR / "log" / "tests" / f"{prefix}-{name}.log"
    return ServiceProcess("services.notifier", port, env, log)


def welcome(email: str, user_id: str | None = None) -> Envelope:
    """A registration event for a fresh user (or `user_id`'s)."""
    user_id = user_id or uuid.uuid4().hex
    payload = UserRegistered(user_id=user_id, email=email, name="N")
    return new_event(payload, source="auth", subject=user_id)


def mail_id(event: Envelope) -> str:
    """The Message-ID the notifier gives the mail of `event`."""
    return message_id(event.id, DEV_MAIL_FROM)


@asynccontextmanager
async def producer(prefix: str) -> AsyncIterator[tuple[KafkaBroker, NotifierSettings]]:
    """A broker that publishes to the test's (prefixed) topics."""
    settings = NotifierSettings(kafka_bootstrap=KAFKA_BOOTSTRAP, topic_prefix=f"{prefix}.")
    async with open_broker(settings, [USERS_TOPIC]) as broker:
        yield broker, settings


class Ledger:
    """Reads the test notifier's delivery records (state per event id)."""

    def __init__(self, prefix: str) -> None:
        self._client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(MONGO_URL)
        self._deliveries = self._client[f"{prefix}_notifier"]["deliveries"]

    async def states(self) -> dict[str, str]:
        """event id -> delivery state."""
        docs = self._deliveries.find({"consumer": MAIL_CONSUMER}, {"event_id": 1, "state": 1})
        return {str(d["event_id"]): str(d["state"]) async for d in docs}

    async def all_sent(self, events: list[Envelope]) -> bool:
        """Whether every event is recorded `sent` (no copy can follow: a redelivery is a no-op)."""
        states = await self.states()
        return all(states.get(e.id) == "sent" for e in events)

    async def close(self) -> None:
        """Close the database client."""
        await self._client.close()
