"""Clients for the shared infrastructure, opened in a lifespan and closed with it."""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

import structlog
from faststream.kafka import KafkaBroker
from pymongo import AsyncMongoClient
from redis.asyncio import Redis

from common.kafka import ensure_topics, make_broker
from common.settings import ServiceSettings

MongoClient = AsyncMongoClient[dict[str, Any]]
log = structlog.get_logger(__name__)


@asynccontextmanager
async def open_mongo(settings: ServiceSettings) -> AsyncIterator[MongoClient]:
    """A pooled MongoDB client (connects lazily; readiness pings it)."""
    client: MongoClient = AsyncMongoClient(
        settings.mongo_url,
        tz_aware=True,
        serverSelectionTimeoutMS=settings.mongo_server_selection_timeout_ms,
        connectTimeoutMS=settings.mongo_connect_timeout_ms,
        socketTimeoutMS=settings.mongo_socket_timeout_ms,
        # No driver retry: on a stopped database a read timed out after 3 s, was retried and
        # answered 503 after 10.9 s, past the gateway's 5 s deadline. Clients retry instead
        # (creates carry an Idempotency-Key, updates an If-Match). Not pymongo's timeoutMS:
        # under overload it turned slow admitted requests into 503s and doubled the served p99.
        retryReads=False,
        retryWrites=False,
        appname=settings.service_name,
    )
    try:
        yield client
    finally:
        await client.close()


@asynccontextmanager
async def open_redis(settings: ServiceSettings) -> AsyncIterator["Redis"]:
    """A pooled Redis client with short timeouts so a dead Redis fails fast."""
    client = Redis.from_url(
        settings.redis_url, socket_timeout=1.0, socket_connect_timeout=1.0, health_check_interval=30
    )
    try:
        yield client
    finally:
        await client.aclose()


@asynccontextmanager
async def open_broker(
    settings: ServiceSettings, topics: Iterable[str], broker: KafkaBroker | None = None
) -> AsyncIterator[KafkaBroker]:
    """Ensure the topics exist, then start the broker (and its subscribers) for the lifespan."""
    broker = broker or make_broker(settings)
    await ensure_topics(settings, topics)
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop()


@asynccontextmanager
async def open_producer(
    settings: ServiceSettings, topics: Iterable[str], retry_s: float = 2.0
) -> AsyncIterator[KafkaBroker]:
    """A publish-only broker, started in the background and retried until Kafka answers.

    Auth and tasks write events to outboxes, so they can serve while Kafka is away, at start too:
    a pod restarted during a broker outage must not crash-loop. Until the broker has started, the
    relay's publishes fail and are retried; nothing is lost.
    """
    broker = make_broker(settings)
    starting = asyncio.create_task(_start_when_reachable(settings, topics, broker, retry_s))
    try:
        yield broker
    finally:
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await starting
        await broker.stop()


async def _start_when_reachable(
    settings: ServiceSettings, topics: Iterable[str], broker: KafkaBroker, retry_s: float
) -> None:
    wanted = list(topics)
    while True:
        try:
            await ensure_topics(settings, wanted)
            await broker.start()
        except Exception:  # Kafka unreachable (any client error): logged, tried again
            log.warning("kafka not reachable yet; the outbox keeps the events", exc_info=True)
            await broker.stop()
            # A retry schedule for an outside dependency: there is no event to await.
            await asyncio.sleep(retry_s)
        else:
            return


async def ping_mongo(client: MongoClient) -> None:
    """Readiness check: the database answers."""
    await client.admin.command("ping")


async def ping_kafka(broker: KafkaBroker) -> None:
    """Readiness check: the broker answers a metadata request."""
    if not await broker.ping(timeout=2.0):
        raise ConnectionError("kafka did not answer")


async def ping_redis(client: "Redis") -> None:
    """Readiness check: Redis answers PING."""
    await client.ping()


async def ping_smtp(host: str, port: int) -> None:
    """Readiness check: the SMTP relay accepts a connection and greets with 220."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        banner = await reader.readline()
        if not banner.startswith(b"220"):
            raise ConnectionError(f"unexpected SMTP greeting {banner[:40]!r}")
    finally:
        writer.close()
        await writer.wait_closed()
