"""The outbox relay: publishes what users and sessions queued, then removes it.

Auth only publishes (user.registered, password_reset_requested, sessions_revoked on the users
topic); it subscribes to nothing. Delivery is at least once: a crash between the broker's ack and
the removal republishes the same event id, which consumers deduplicate.
"""

import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from typing import Any

from faststream.kafka import KafkaBroker
from opentelemetry.instrumentation.utils import suppress_instrumentation
from pydantic import ValidationError
from pymongo.asynchronous.collection import AsyncCollection

from common.events import Envelope
from common.kafka import publish
from common.metrics import BacklogGauge
from common.settings import ServiceSettings
from services.auth.storage import AuthStore, Doc

log = logging.getLogger(__name__)
_RETRY_AFTER_ERROR_S = 2.0


class OutboxRelay:
    """Background task of the auth process; `kick()` after a write makes it run at once."""

    def __init__(
        self, store: AuthStore, broker: KafkaBroker, settings: ServiceSettings, poll_s: float
    ) -> None:
        self._store = store
        self._broker = broker
        self._settings = settings
        self._poll_s = poll_s
        self._wake = asyncio.Event()
        self._backlog = BacklogGauge("auth", store.pending_events)

    def kick(self) -> None:
        """Ask for a pass now (a request just queued an event)."""
        self._wake.set()

    async def run(self) -> None:
        """Drain, then sleep until kicked or the poll interval passes (crash leftovers)."""
        while True:
            self._wake.clear()
            try:
                await self.drain()
                timeout = self._poll_s
            except Exception:
                log.exception("outbox relay pass failed")
                timeout = _RETRY_AFTER_ERROR_S
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def drain(self) -> int:
        """Publish every pending event; returns how many were published."""
        published = 0
        # The relay's own claims and removals would be a root trace per poll; each publish
        # still runs in the trace of the request that wrote the event (common.kafka.publish).
        with suppress_instrumentation():
            await self._backlog.refresh()
            for collection in (self._store.users, self._store.sessions):
                while doc := await self._store.claim_outbox(collection, datetime.now(UTC)):
                    published += await self._publish(collection, doc)
        return published

    async def _publish(self, collection: AsyncCollection[dict[str, Any]], doc: Doc) -> int:
        done: list[Doc] = []
        try:
            for entry in doc.get("outbox", []):
                event = Envelope.model_validate_json(entry["json"])
                await publish(self._broker, self._settings, entry["topic"], event)
                done.append(entry)
        except (ValidationError, KeyError):
            # A malformed entry must not starve the others: this document keeps its lease (retried
            # after it expires) and the pass moves on.
            log.exception("undeliverable outbox entry in %s/%s", collection.name, doc["_id"])
            await self._store.release_outbox(collection, doc["_id"], done, keep_lease=True)
            return len(done)
        except BaseException:
            # Kafka trouble: drop what did go out and the lease, so the retry is prompt.
            await self._store.release_outbox(collection, doc["_id"], done)
            raise
        await self._store.release_outbox(collection, doc["_id"], done)
        return len(done)
