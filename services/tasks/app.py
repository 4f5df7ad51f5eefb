"""Composition root of the tasks service."""

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI

from common.events import TASKS_TOPIC
from common.health import Check, health_routes
from common.infra import open_broker, open_mongo, ping_kafka, ping_mongo
from common.problems import install_problem_handlers
from services.tasks.settings import TasksSettings


def create_app(settings: TasksSettings) -> FastAPI:
    """Build the tasks app; clients are made in the lifespan, not here."""
    checks: dict[str, Check] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            mongo = await stack.enter_async_context(open_mongo(settings))
            broker = await stack.enter_async_context(open_broker(settings, [TASKS_TOPIC]))
            checks["mongo"] = lambda: ping_mongo(mongo)
            checks["kafka"] = lambda: ping_kafka(broker)
            yield

    app = FastAPI(title="Taskbus tasks", lifespan=lifespan)
    install_problem_handlers(app)
    app.router.routes.extend(health_routes(lambda: checks))
    return app
