"""Composition root of the gateway: a thin Starlette app (the hot path stays off FastAPI)."""

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from starlette.applications import Starlette

from common.health import Check, health_routes
from common.infra import open_redis, ping_redis
from gateway.settings import GatewaySettings


def create_app(settings: GatewaySettings) -> Starlette:
    """Build the gateway app; clients are made in the lifespan, not here."""
    checks: dict[str, Check] = {}

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            redis = await stack.enter_async_context(open_redis(settings))
            checks["redis"] = lambda: ping_redis(redis)
            yield

    return Starlette(routes=health_routes(lambda: checks), lifespan=lifespan)
