"""Composition root of the auth service."""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from common.events import USERS_TOPIC
from common.health import Check, health_routes
from common.infra import open_mongo, open_producer, open_redis, ping_mongo, ping_redis
from common.limits import BodyLimit
from common.problems import install_problem_handlers
from common.unavailable import install_failure_handlers
from services.auth.api import jwks_router, router
from services.auth.deps import Deps
from services.auth.domain import Passwords
from services.auth.events import outbox_relay
from services.auth.keys import KeyRing, generate_key, load_key, parse_key_ring
from services.auth.keys_store import MongoDevKeys
from services.auth.reset_requests import wait_pending
from services.auth.sessions_store import MongoSessions
from services.auth.settings import AuthSettings
from services.auth.stores import DevKeyStore
from services.auth.throttle import LoginThrottle
from services.auth.users import MongoUsers


async def load_keys(settings: AuthSettings, store: DevKeyStore) -> KeyRing:
    """The configured key ring; outside production, a development key shared through Mongo.

    Replicas must sign with the same key or the JWKS one serves would not verify another's tokens;
    a per-process key or a local file cannot give that across hosts, the shared database can.
    """
    if settings.signing_keys is not None:
        return parse_key_ring(settings.signing_keys.get_secret_value())
    if settings.is_production:
        raise RuntimeError("AUTH_SIGNING_KEYS must be set in production")
    proposal = await asyncio.to_thread(generate_key)
    kid, pem = await store.dev_key(proposal.kid, proposal.pem())
    return KeyRing(load_key(kid, pem))


def create_app(settings: AuthSettings) -> FastAPI:
    """Build the auth app; clients are made in the lifespan, not here."""
    checks: dict[str, Check] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            mongo = await stack.enter_async_context(open_mongo(settings))
            redis = await stack.enter_async_context(open_redis(settings))
            broker = await stack.enter_async_context(open_producer(settings, [USERS_TOPIC]))
            db = mongo[settings.mongo_db]
            users, sessions = MongoUsers(db), MongoSessions(db)
            await users.ensure_indexes()
            await sessions.ensure_indexes()
            relay = outbox_relay(db, users, sessions, broker, settings)
            passwords = Passwords(
                memory_kib=settings.argon2_memory_kib,
                time_cost=settings.argon2_time_cost,
                parallelism=settings.argon2_parallelism,
                concurrency=settings.argon2_concurrency,
            )
            await passwords.dummy_hash()  # so the first unknown-email login costs no extra hash
            keys = await load_keys(settings, MongoDevKeys(db))
            app.state.deps = Deps(
                settings=settings,
                users=users,
                sessions=sessions,
                passwords=passwords,
                throttle=LoginThrottle(
                    redis,
                    settings.redis_prefix,
                    free_attempts=settings.login_free_attempts,
                    cap_s=settings.login_backoff_cap_s,
                    window_s=settings.login_failure_window_s,
                    account_free=settings.login_account_free_attempts,
                    ip_free=settings.login_ip_free_attempts,
                    resets_per_ip_hour=settings.reset_requests_per_ip_hour,
                    reset_mails_per_address_hour=settings.reset_mails_per_address_hour,
                ),
                relay=relay,
                keys=keys,
                verifier=keys.verifier(issuer=settings.jwt_issuer, audience=settings.jwt_audience),
            )
            # Not Kafka: writes go to the outbox and the relay catches up after a broker outage.
            checks["mongo"] = lambda: ping_mongo(mongo)
            checks["redis"] = lambda: ping_redis(redis)
            stack.push_async_callback(_cancel, asyncio.create_task(relay.run()))
            # Runs first on shutdown: reset requests already answered 202 finish their write.
            stack.push_async_callback(wait_pending)
            yield

    app = FastAPI(title="Taskbus auth", lifespan=lifespan)
    install_problem_handlers(app)
    install_failure_handlers(app, RedisConnectionError, RedisTimeoutError)
    app.include_router(router)
    app.include_router(jwks_router)
    app.router.routes.extend(health_routes(lambda: checks))
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    return app


async def _cancel(task: "asyncio.Task[None]") -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
