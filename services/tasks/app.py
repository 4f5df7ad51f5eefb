"""Composition root of the tasks service."""

import asyncio
from collections.abc import AsyncIterator, Coroutine
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from typing import Any

import aiohttp
from fastapi import FastAPI
from faststream.kafka import KafkaBroker

from common.events import TASKS_TOPIC
from common.health import Check, health_routes
from common.infra import open_mongo, open_producer, ping_mongo
from common.limits import BodyLimit
from common.problems import install_problem_handlers
from common.relay import OutboxRelay
from common.revocations import RevocationFeed, RevocationList
from common.tokens import TokenVerifier, jwks_source
from common.unavailable import LoadShedder, install_failure_handlers
from services.tasks.api import (
    Deps,
    install_task_error_handlers,
    router,
)
from services.tasks.command_feed import command_loops
from services.tasks.events import backlog_full, outbox_relay
from services.tasks.quota import TaskQuota
from services.tasks.reminders import ReminderScan, ReminderStore
from services.tasks.service import TaskService
from services.tasks.settings import TasksSettings
from services.tasks.storage import TaskStore


async def _stop(task: "asyncio.Task[None]") -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def create_app(settings: TasksSettings) -> FastAPI:
    """Build the tasks app; clients are made in the lifespan, not here."""
    checks: dict[str, Check] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            mongo = await stack.enter_async_context(open_mongo(settings))
            broker = await stack.enter_async_context(open_producer(settings, [TASKS_TOPIC]))
            http = await stack.enter_async_context(aiohttp.ClientSession())
            store = TaskStore(
                mongo[settings.mongo_db],
                locks=settings.write_locks,
                lock_wait_s=settings.lock_wait_s,
                outbox_max=settings.outbox_max,
            )
            await store.ensure_indexes()
            relay = outbox_relay(store.tasks, store.locks, broker, settings)
            quota = _quota(store, settings)
            revocations = RevocationList()
            verifier = TokenVerifier(
                jwks_source(settings.static_jwks(), http, settings.jwks_url),
                issuer=settings.jwt_issuer,
                audience=settings.jwt_audience,
            )
            app.state.deps = Deps(
                tasks=TaskService(
                    store,
                    written=partial(relay.wrote, store.tasks.name),
                    backlog_full=partial(backlog_full, relay, settings),
                    quota=quota,
                ),
                verifier=verifier,
                revocations=revocations,
                cursor_secret=settings.cursor_secret.get_secret_value().encode(),
            )
            # Stopped before the broker closes (exit stack order), so nothing publishes late.
            for loop in _loops(
                settings,
                store=store,
                broker=broker,
                relay=relay,
                revocations=revocations,
                quota=quota,
            ):
                stack.push_async_callback(_stop, asyncio.create_task(loop))
            # Not Kafka: writes go to the outbox and the relay catches up after a broker outage.
            checks["mongo"] = lambda: ping_mongo(mongo)
            # Ready once revocations are known; not Kafka's later outages (common.revocations).
            checks["revocations"] = revocations.ready
            yield

    app = FastAPI(title="Taskbus tasks", lifespan=lifespan)
    install_problem_handlers(app)
    install_failure_handlers(app)
    install_task_error_handlers(app)
    app.include_router(router)
    app.router.routes.extend(health_routes(lambda: checks))
    _add_middleware(app, settings)
    return app


def _loops(
    settings: TasksSettings,
    *,
    store: TaskStore,
    broker: KafkaBroker,
    relay: OutboxRelay,
    revocations: RevocationList,
    quota: TaskQuota,
) -> list[Coroutine[Any, Any, None]]:
    """The process's background loops."""
    # Relay leases use lock documents even when write locks are off: always swept.
    feed = RevocationFeed(settings, revocations)
    loops = [store.locks.sweep_forever(), relay.watch_backlog(), feed.run()]
    if settings.relay_enabled:
        loops.append(relay.run())
    if settings.commands_enabled:
        loops.extend(command_loops(store, broker, settings, relay, quota))
    if settings.reminders_enabled:
        reminders = ReminderStore(store.tasks, store.locks, wait_s=settings.lock_wait_s)
        loops.append(ReminderScan(reminders, settings, relay).run())
    return loops


def _quota(store: TaskStore, settings: TasksSettings) -> TaskQuota:
    async def live_tasks(owner: str) -> int:
        return (await store.stats(owner)).total

    return TaskQuota(
        live_tasks,
        max_tasks=settings.max_tasks_per_user,
        recount_every=settings.quota_recount_every,
        full_recheck_s=settings.quota_recheck_s,
    )


def _add_middleware(app: FastAPI, settings: TasksSettings) -> None:
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    # Outermost of the app's own middleware: a shed request costs no body read or routing.
    app.add_middleware(
        LoadShedder,
        limit=settings.shed_limit,
        queue=settings.shed_queue,
        wait_s=settings.shed_wait_s,
    )
