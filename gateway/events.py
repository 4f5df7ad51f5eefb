"""Kafka consumers: task events invalidate a user's cached reads, revocations refuse sessions.

Every effect lands in Redis, so one consumer group shared by all gateway processes suffices and a
restarted process knows everything at once. Effects are idempotent (a generation bump more is
harmless, a revocation cut-off only moves forward), so redelivery after a failure is safe:
handlers raise on a Redis error and the message is consumed again. Handlers take the raw
message and parse it themselves: a malformed one is logged and skipped, never redelivered
forever in front of the good ones.
"""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from common.events import (
    TASKS_TOPIC,
    USERS_TOPIC,
    Envelope,
    SessionsRevoked,
    TaskCompleted,
    TaskCreated,
    TaskDeleted,
    TaskUpdated,
)
from gateway.auth import record_revocation
from gateway.cache import bump_generation
from gateway.settings import GatewaySettings

log = structlog.get_logger(__name__)

REDELIVERY_PAUSE_S = 1.0
INVALIDATING = frozenset(
    cls.event_type for cls in (TaskCreated, TaskUpdated, TaskCompleted, TaskDeleted)
)


def parse(body: bytes) -> Envelope | None:
    """The envelope, or None (logged) for a message no gateway could act on."""
    try:
        return Envelope.model_validate_json(body)
    except ValidationError as exc:
        log.warning("skipping malformed event", error=str(exc)[:300])
        return None


@asynccontextmanager
async def redis_retry_pause() -> AsyncIterator[None]:
    """On a Redis error, wait before the message is redelivered: no hot loop during an outage."""
    try:
        yield
    except RedisError:
        log.warning("redis unavailable, event will be redelivered")
        await asyncio.sleep(REDELIVERY_PAUSE_S)
        raise


def subscribe(broker: KafkaBroker, settings: GatewaySettings, redis: "Redis") -> None:
    """Attach the gateway's consumers to `broker` (before it starts)."""
    prefix = settings.redis_prefix

    # Earliest for a new group: no event published while the group first forms is missed; old
    # events replayed are no-ops (see the module docstring).
    @broker.subscriber(
        settings.topic(TASKS_TOPIC),
        group_id=settings.topic("gateway.tasks"),
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.NACK_ON_ERROR,
        title="gateway-cache-invalidation",
        description="task.created/updated/completed/deleted.v1: bump the owner's cache generation",
    )
    async def on_task_event(message: KafkaMessage) -> None:
        event = parse(message.body)
        if event is not None and event.type in INVALIDATING:
            async with redis_retry_pause():
                await bump_generation(redis, prefix, event.subject)

    @broker.subscriber(
        settings.topic(USERS_TOPIC),
        group_id=settings.topic("gateway.users"),
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.NACK_ON_ERROR,
        title="gateway-session-revocation",
        description="user.sessions_revoked.v1: refuse the sessions' access tokens at once",
    )
    async def on_user_event(message: KafkaMessage) -> None:
        event = parse(message.body)
        if event is None or event.type != SessionsRevoked.event_type:
            return
        try:
            revoked = SessionsRevoked.model_validate(event.data)
        except ValidationError as exc:
            log.warning("skipping malformed revocation", error=str(exc)[:300])
            return
        async with redis_retry_pause():
            await record_revocation(redis, prefix, revoked, settings.max_token_lifetime_s)
