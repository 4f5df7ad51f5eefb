"""Kafka consumers: task events invalidate a user's cached reads, revocations refuse sessions.

Every effect lands in Redis, so one consumer group shared by all gateway processes suffices and a
restarted process knows everything at once. Effects are idempotent (a generation bump more is
harmless, a revocation cut-off only moves forward), so redelivery after a failure is safe:
handlers raise on a Redis error and the message is consumed again. Handlers take the raw
message and parse it themselves: a malformed one is logged and skipped, never redelivered
forever in front of the good ones.
"""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

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

Handler = Callable[[KafkaMessage], Awaitable[None]]
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


@dataclass(frozen=True, slots=True)
class Subscription:
    """One consumer: its topic, the group every gateway process shares, its AsyncAPI entry."""

    topic: str
    group: str
    title: str
    description: str


CACHE_INVALIDATION = Subscription(
    TASKS_TOPIC,
    "gateway.tasks",
    "gateway-cache-invalidation",
    "task.created/updated/completed/deleted.v1: bump the owner's cache generation",
)
SESSION_REVOCATION = Subscription(
    USERS_TOPIC,
    "gateway.users",
    "gateway-session-revocation",
    "user.sessions_revoked.v1: refuse the sessions' access tokens at once",
)


def subscribe(broker: KafkaBroker, settings: GatewaySettings, redis: "Redis") -> None:
    """Attach the gateway's consumers to `broker` (before it starts)."""
    prefix = settings.redis_prefix

    @_consumer(broker, settings, CACHE_INVALIDATION)
    async def on_task_event(message: KafkaMessage) -> None:
        event = parse(message.body)
        if event is not None and event.type in INVALIDATING:
            async with redis_retry_pause():
                await bump_generation(redis, prefix, event.subject)

    @_consumer(broker, settings, SESSION_REVOCATION)
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


def _consumer(
    broker: KafkaBroker, settings: GatewaySettings, subscription: Subscription
) -> Callable[[Handler], Any]:
    """The broker's subscriber decorator for one subscription."""
    # Earliest for a new group: no event published while the group first forms is missed; old
    # events replayed are no-ops (see the module docstring).
    return broker.subscriber(
        settings.topic(subscription.topic),
        group_id=settings.topic(subscription.group),
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.NACK_ON_ERROR,
        title=subscription.title,
        description=subscription.description,
    )
