"""Composition root of the notifier service."""

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import timedelta

import aiohttp
import structlog
from fastapi import FastAPI
from pymongo.errors import PyMongoError

from common.clock import utcnow
from common.health import Check, health_routes
from common.infra import open_broker, open_mongo, ping_kafka, ping_mongo, ping_smtp
from common.kafka import make_broker
from common.limits import BodyLimit
from common.problems import install_problem_handlers
from common.revocations import RevocationFeed, RevocationList
from common.tokens import TokenVerifier, jwks_source
from services.notifier.api import MAX_BODY_BYTES, router
from services.notifier.commands import notification_feed
from services.notifier.delivery import Deliverer
from services.notifier.events import Pipeline, notifier_topics, register
from services.notifier.mailer import Mailer
from services.notifier.metrics import COLLECTOR, Metrics
from services.notifier.settings import NotifierSettings
from services.notifier.storage import Store

log = structlog.get_logger(__name__)
PRUNE_INTERVAL_S = 3600.0


async def _prune_forever(store: Store, settings: NotifierSettings) -> None:
    """Hourly, drop ledger entries older than the retention (every replica may do it)."""
    while True:
        cutoff = utcnow() - timedelta(seconds=settings.ledger_retention_s)
        try:
            removed = await store.prune(cutoff)
            log.info("delivery ledger pruned", removed=removed)
        except PyMongoError:
            log.warning("delivery ledger pruning failed; trying again later", exc_info=True)
        await asyncio.sleep(PRUNE_INTERVAL_S)


def create_app(settings: NotifierSettings) -> FastAPI:
    """Build the notifier app; clients are made in the lifespan, not here."""
    checks: dict[str, Check] = {"smtp": lambda: ping_smtp(settings.smtp_host, settings.smtp_port)}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            mongo = await stack.enter_async_context(open_mongo(settings))
            store = Store(mongo[settings.mongo_db])
            await store.ensure_indexes()
            session = await stack.enter_async_context(aiohttp.ClientSession())
            app.state.store = store
            app.state.verifier = TokenVerifier(
                jwks_source(settings.static_jwks(), session, settings.jwks_url),
                issuer=settings.jwt_issuer,
                audience=settings.jwt_audience,
            )
            broker = make_broker(settings)
            metrics = Metrics()
            deliverer = Deliverer(settings, store, Mailer(settings), metrics)
            pipeline = Pipeline(broker, settings, deliverer, metrics, random.Random())  # noqa: S311 - jitter, not secrecy
            subs = register(broker, settings, pipeline)
            metrics.consumers = subs.consumers
            COLLECTOR.live.append(metrics)
            stack.callback(COLLECTOR.live.remove, metrics)
            stack.callback(subs.pauser.cancel)
            await stack.enter_async_context(
                open_broker(settings, notifier_topics(settings), broker)
            )
            pruning = asyncio.create_task(_prune_forever(store, settings))
            stack.callback(pruning.cancel)
            if settings.commands_enabled:
                commands = notification_feed(settings, store, deliverer, broker)
                stack.callback(asyncio.create_task(commands.run()).cancel)
            revocations = app.state.revocations = RevocationList()
            feed = asyncio.create_task(RevocationFeed(settings, revocations).run())
            stack.callback(feed.cancel)
            checks["mongo"] = lambda: ping_mongo(mongo)
            checks["kafka"] = lambda: ping_kafka(broker)
            checks["revocations"] = revocations.ready
            yield

    app = FastAPI(title="Taskbus notifier", lifespan=lifespan)
    install_problem_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)
    app.include_router(router)
    app.router.routes.extend(health_routes(lambda: checks))
    return app
