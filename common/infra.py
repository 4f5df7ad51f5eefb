"""Clients for the shared infrastructure, opened in a lifespan and closed with it."""

import asyncio
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

from faststream.kafka import KafkaBroker
from pymongo import AsyncMongoClient
from redis.asyncio import Redis

from common.kafka import ensure_topics, make_broker
from common.settings import ServiceSettings

MongoClient = AsyncMongoClient[dict[str, Any]]


@asynccontextmanager
async def open_mongo(settings: ServiceSettings) -> AsyncIterator[MongoClient]:
    """A pooled MongoDB client (connects lazily; readiness pings it)."""
    client: MongoClient = AsyncMongoClient(
        settings.mongo_url,
        tz_aware=True,
        serverSelectionTimeoutMS=settings.mongo_server_selection_timeout_ms,
        connectTimeoutMS=settings.mongo_connect_timeout_ms,
        socketTimeoutMS=settings.mongo_socket_timeout_ms,
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
