"""Protocol-level health checks of the local stack's parts (what "healthy" means for each)."""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiokafka.admin import AIOKafkaAdminClient
from pymongo import AsyncMongoClient
from redis.asyncio import Redis

from common.infra import ping_smtp

CHECK_TIMEOUT_S = 3.0
HealthCheck = Callable[[], Awaitable[None]]


async def check_kafka(bootstrap: str, options: dict[str, Any] | None = None) -> None:
    """The broker answers a metadata request (as the super user once SASL is on)."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=2000, **(options or {})
    )
    await admin.start()
    try:
        await admin.list_topics()
    finally:
        await admin.close()


async def check_mongo(url: str) -> None:
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(
        url, serverSelectionTimeoutMS=2000
    )
    try:
        await client.admin.command("ping")
    finally:
        await client.close()


async def check_redis(url: str) -> None:
    client = Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        await client.ping()
    finally:
        await client.aclose()


async def check_smtp(port: int) -> None:
    """The local SMTP sink greets."""
    await ping_smtp("127.0.0.1", port)


def http_check(url: str) -> HealthCheck:
    """A check that GETs `url` and wants 200."""
    return lambda: check_http(url)


async def check_http(url: str) -> None:
    timeout = aiohttp.ClientTimeout(total=CHECK_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as response:
        if response.status != 200:
            raise ConnectionError(
                f"{url} answered {response.status}: {(await response.text())[:200]}"
            )


async def part_healthy(check: HealthCheck) -> str | None:
    """None when the part answers its protocol check, else why not."""
    try:
        await asyncio.wait_for(check(), CHECK_TIMEOUT_S + 1)
    except Exception as exc:  # noqa: BLE001 - any failure is "not healthy", reported as text
        return f"{type(exc).__name__}: {exc}"[:200] or type(exc).__name__
    return None
