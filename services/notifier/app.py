"""Composition root of the notifier service."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI

from common.events import NOTIFIER_DLQ_TOPIC, NOTIFIER_RETRY_TOPIC, TASKS_TOPIC, USERS_TOPIC
from common.health import Check, health_routes
from common.infra import open_broker, open_mongo, ping_kafka, ping_mongo
from common.problems import install_problem_handlers
from services.notifier.settings import NotifierSettings


async def _ping_smtp(settings: NotifierSettings) -> None:
    """The SMTP relay accepts connections and greets."""
    reader, writer = await asyncio.open_connection(settings.smtp_host, settings.smtp_port)
    try:
        banner = await reader.readline()
        if not banner.startswith(b"220"):
            raise ConnectionError(f"unexpected SMTP greeting {banner[:40]!r}")
    finally:
        writer.close()
        await writer.wait_closed()


def create_app(settings: NotifierSettings) -> FastAPI:
    """Build the notifier app; clients are made in the lifespan, not here."""
    checks: dict[str, Check] = {"smtp": lambda: _ping_smtp(settings)}
    topics = [USERS_TOPIC, TASKS_TOPIC, NOTIFIER_RETRY_TOPIC, NOTIFIER_DLQ_TOPIC]

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            mongo = await stack.enter_async_context(open_mongo(settings))
            broker = await stack.enter_async_context(open_broker(settings, topics))
            checks["mongo"] = lambda: ping_mongo(mongo)
            checks["kafka"] = lambda: ping_kafka(broker)
            yield

    app = FastAPI(title="Taskbus notifier", lifespan=lifespan)
    install_problem_handlers(app)
    app.router.routes.extend(health_routes(lambda: checks))
    return app
