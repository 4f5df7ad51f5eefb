"""Revoked sessions as each service knows them: an in-process list fed by the users topic.

The gateway checks revocation in Redis; tasks and notifier answer on their own ports too, so each
process keeps its own list of `user.sessions_revoked` events (no shared state to lose, no round
trip per request). The rule is the gateway's (gateway/gate.py): a named session is refused; a
user-wide cut-off refuses every token whose session began before it, to the millisecond.

An entry is kept only while a token it covers can still be alive (the longest access-token
lifetime plus the verifiers' leeway). On start the feed replays the topic from that long ago
(`offsets_for_times`); until it has read up to the end it found, the list is unknown and every
authenticated request fails closed with 503 + Retry-After, and readiness reports not ready. Once
caught up it stays ready: if Kafka goes away later, auth cannot publish new revocations either
(its outbox holds them), and the consumer picks up where it stopped when Kafka is back.
"""

import asyncio
from collections.abc import Mapping

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from common.clock import utcnow
from common.events import USERS_TOPIC, Envelope, SessionsRevoked
from common.kafka import ensure_topics, kafka_options
from common.settings import ServiceSettings
from common.tokens import (
    MAX_ACCESS_TTL_S,
    MAX_LEEWAY_S,
    AccessClaims,
    RevocationsUnknownError,
    epoch_ms,
    session_started_ms,
)

log = structlog.get_logger(__name__)
# How long a revocation matters: no token it covers outlives this past the cut-off.
KEEP_MS = (MAX_ACCESS_TTL_S + MAX_LEEWAY_S) * 1000
RETRY_S = 2.0
# Pruning scans every entry (~0.6 ms for 10,000): not on every poll.
PRUNE_EVERY_MS = 10_000


def cut_off_ms(event: SessionsRevoked) -> int:
    """The event's cut-off in whole ms, rounded up: a finer one (an older auth's) fails closed."""
    before = event.revoked_before
    return epoch_ms(before) + (1 if before.microsecond % 1000 else 0)


class RevocationList:
    """The revocations of the last KEEP_MS, and whether they are known completely yet."""

    def __init__(self) -> None:
        self.caught_up = False
        self._sessions: dict[str, int] = {}  # session id -> forget after (ms)
        self._users: dict[str, int] = {}  # user id -> cut-off (ms)

    def record(self, event: SessionsRevoked, now_ms: int) -> None:
        """Remember one revocation (idempotent; a user's cut-off only moves forward)."""
        cut = cut_off_ms(event)
        if cut + KEEP_MS <= now_ms:
            return  # every token it covers has expired
        for session in event.session_ids:
            self._sessions[session] = cut + KEEP_MS
        if not event.session_ids:
            self._users[event.user_id] = max(cut, self._users.get(event.user_id, cut))

    def refuses(self, claims: AccessClaims) -> bool:
        """True if the token's session was revoked; RevocationsUnknownError before catch-up."""
        if not self.caught_up:
            raise RevocationsUnknownError
        if claims.sid in self._sessions:
            return True
        cut = self._users.get(claims.sub)
        return cut is not None and session_started_ms(claims) < cut

    def prune(self, now_ms: int) -> None:
        """Forget the revocations whose tokens have all expired."""
        self._sessions = {s: until for s, until in self._sessions.items() if until > now_ms}
        self._users = {u: cut for u, cut in self._users.items() if cut + KEEP_MS > now_ms}

    async def ready(self) -> None:
        """Readiness check: the list has caught up with the topic once."""
        if not self.caught_up:
            raise RevocationsUnknownError("revocations not caught up yet")

    def __len__(self) -> int:
        return len(self._sessions) + len(self._users)


def now_ms() -> int:
    """The current time in whole ms."""
    return epoch_ms(utcnow())


class RevocationFeed:
    """Feeds a RevocationList from the users topic: replay KEEP_MS back, then follow."""

    def __init__(self, settings: ServiceSettings, revocations: RevocationList) -> None:
        self._settings = settings
        self._topic = settings.topic(USERS_TOPIC)
        self._revocations = revocations

    async def run(self) -> None:
        """Replay then follow the topic for ever; start-up failures are retried."""
        while True:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self._settings.kafka_bootstrap,
                client_id=f"{self._settings.service_name}-revocations",
                group_id=None,  # every process reads every partition; nothing is committed
                enable_auto_commit=False,
                **kafka_options(self._settings),
            )
            try:
                await ensure_topics(self._settings, [USERS_TOPIC])
                await consumer.start()
                ends = await self._replay_from(consumer)
                await self._follow(consumer, ends)
            except Exception as exc:  # noqa: BLE001 - a dead feed would refuse every request
                log.warning("revocation feed failed; retrying", error=repr(exc)[:200])
                await asyncio.sleep(RETRY_S)
            finally:
                await consumer.stop()

    async def _replay_from(self, consumer: AIOKafkaConsumer) -> dict[TopicPartition, int]:
        """Seek every partition to KEEP_MS ago; the end offsets that mean "caught up"."""
        # aiokafka exposes no public "partitions of a topic I am not subscribed to" call.
        cluster = await consumer._client.fetch_all_metadata()
        partitions = sorted(cluster.partitions_for_topic(self._topic) or ())
        if not partitions:
            raise KafkaError(f"{self._topic} has no partitions yet")
        tps = [TopicPartition(self._topic, p) for p in partitions]
        consumer.assign(tps)
        since = now_ms() - KEEP_MS
        found = await consumer.offsets_for_times(dict.fromkeys(tps, since))
        ends: dict[TopicPartition, int] = await consumer.end_offsets(tps)
        for tp in tps:
            hit = found.get(tp)
            consumer.seek(tp, hit.offset if hit is not None else ends[tp])
        return ends

    async def _follow(self, consumer: AIOKafkaConsumer, ends: Mapping[TopicPartition, int]) -> None:
        pending = dict(ends)
        pruned = now_ms()
        while True:
            if not self._revocations.caught_up:
                pending = {
                    tp: end for tp, end in pending.items() if await consumer.position(tp) < end
                }
                if not pending:
                    self._revocations.caught_up = True
                    log.info("revocations caught up", known=len(self._revocations))
            batch = await consumer.getmany(timeout_ms=500)
            now = now_ms()
            for records in batch.values():
                for record in records:
                    self._take(record.value, now)
            if now - pruned >= PRUNE_EVERY_MS:
                self._revocations.prune(now)
                pruned = now

    def _take(self, value: bytes | None, now: int) -> None:
        try:
            event = Envelope.model_validate_json(value or b"")
            if event.type != SessionsRevoked.event_type:
                return
            self._revocations.record(SessionsRevoked.model_validate(event.data), now)
        except ValidationError as exc:
            log.warning("skipping malformed event", error=str(exc)[:300])
