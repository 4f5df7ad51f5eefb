"""Auth routes over in-memory stores typed by the storage Protocols (no database, no broker)."""

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis

from common.events import RevokeReason
from common.outbox import OutboxEntry
from common.problems import install_problem_handlers
from services.auth.api import router
from services.auth.deps import Deps
from services.auth.domain import EmailTakenError, Passwords, Session, User
from services.auth.keys import KeyRing, generate_key
from services.auth.settings import AuthSettings
from services.auth.throttle import LoginThrottle
from tests.support.auth import PASSWORD, bearer


class MemoryUsers:
    """UserStore in a dict; queued events in a list."""

    def __init__(self) -> None:
        self.docs: dict[str, User] = {}
        self.events: list[OutboxEntry] = []

    async def insert(self, user: User, event: OutboxEntry) -> None:
        if any(u.email == user.email for u in self.docs.values()):
            raise EmailTakenError(user.email)
        self.docs[user.id] = user
        self.events.append(event)

    async def get(self, user_id: str) -> User | None:
        return self.docs.get(user_id)

    async def by_email(self, email: str) -> User | None:
        return next((u for u in self.docs.values() if u.email == email), None)

    async def replace_hash(self, user_id: str, old_hash: str, new_hash: str) -> None:
        if self.docs[user_id].password_hash == old_hash:
            self._change(user_id, password_hash=new_hash)

    async def rename(self, user_id: str, name: str) -> User | None:
        return self._change(user_id, name=name)

    async def change_password(
        self, user_id: str, new_hash: str, now: datetime, event: OutboxEntry
    ) -> User | None:
        self.events.append(event)
        return self._change(user_id, password_hash=new_hash, sessions_valid_after=now)

    async def revoke_sessions(self, user_id: str, now: datetime, event: OutboxEntry) -> None:
        self.events.append(event)
        self._change(user_id, sessions_valid_after=now)

    async def set_reset(
        self, user_id: str, token_hash: str, expires_at: datetime, now: datetime, event: OutboxEntry
    ) -> None:
        raise NotImplementedError  # not reached by these tests

    async def by_reset(self, token_hash: str, now: datetime) -> User | None:
        return None

    async def consume_reset(
        self, user_id: str, token_hash: str, new_hash: str, now: datetime, event: OutboxEntry
    ) -> bool:
        return False

    def _change(self, user_id: str, **fields: object) -> User | None:
        user = self.docs.get(user_id)
        if user is not None:
            self.docs[user_id] = user = user.model_copy(update=fields)
        return user


class MemorySessions:
    """SessionStore in a dict; queued events in a list."""

    def __init__(self) -> None:
        self.docs: dict[str, Session] = {}
        self.events: list[OutboxEntry] = []

    async def insert(self, session: Session) -> None:
        self.docs[session.id] = session

    async def get(self, session_id: str) -> Session | None:
        return self.docs.get(session_id)

    async def rotate(self, session: Session, new_hash: str, now: datetime) -> bool:
        spent = (*session.spent, session.previous_hash) if session.previous_hash else session.spent
        return self._swap(
            session,
            current_hash=new_hash,
            previous_hash=session.current_hash,
            rotated_at=now,
            spent=spent,
        )

    async def regrant(self, session: Session, new_hash: str) -> bool:
        spent = (*session.spent, session.current_hash)
        return self._swap(session, current_hash=new_hash, spent=spent)

    async def revoke(
        self, session_id: str, reason: RevokeReason, now: datetime, event: OutboxEntry
    ) -> bool:
        if self.docs[session_id].revoked:
            return False
        self.docs[session_id] = self.docs[session_id].model_copy(update={"revoked": True})
        self.events.append(event)
        return True

    async def mark_revoked_before(self, user_id: str, now: datetime) -> None:
        for sid, s in self.docs.items():
            if s.user_id == user_id and s.created_at < now:
                self.docs[sid] = s.model_copy(update={"revoked": True})

    def _swap(self, session: Session, **fields: object) -> bool:
        stored = self.docs[session.id]
        if stored.revoked or stored.current_hash != session.current_hash:
            return False
        self.docs[session.id] = stored.model_copy(update=fields)
        return True


class Wakes:
    """The relay as the routes see it: counts its wake-ups."""

    def __init__(self) -> None:
        self.count = 0

    def wake(self) -> None:
        self.count += 1


class App:
    """The auth routes with their fakes, and a client for them."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.users = MemoryUsers()
        self.sessions = MemorySessions()
        self.relay = Wakes()


@pytest.fixture
async def app() -> AsyncIterator[App]:
    settings = AuthSettings()
    keys = KeyRing(generate_key("unit"))
    api = FastAPI()
    install_problem_handlers(api)
    api.include_router(router)
    transport = httpx.ASGITransport(app=api)
    client = httpx.AsyncClient(transport=transport, base_url="https://auth.test")
    fakes = App(client)
    api.state.deps = Deps(
        settings=settings,
        users=fakes.users,
        sessions=fakes.sessions,
        passwords=Passwords(memory_kib=19456, time_cost=2, parallelism=1, concurrency=2),
        # Never reached: these tests do not log in (no Redis round trip is made).
        throttle=LoginThrottle(
            Redis.from_url("redis://127.0.0.1:1"), "t:", free_attempts=1, cap_s=1, window_s=60
        ),
        relay=fakes.relay,
        keys=keys,
        verifier=keys.verifier(issuer=settings.jwt_issuer, audience=settings.jwt_audience),
    )
    async with client:
        yield fakes


def _types(events: list[OutboxEntry]) -> list[str]:
    return [str(e["event"]["type"]) for e in events]


async def _register(app: App) -> dict[str, Any]:
    body = {"email": "a@example.com", "password": PASSWORD, "name": "A"}
    response = await app.client.post("/api/auth/register", json=body)
    assert response.status_code == 201, response.text
    registered: dict[str, Any] = response.json()
    return registered


async def test_register_queues_user_registered_and_wakes_the_relay(app: App) -> None:
    body = await _register(app)

    assert _types(app.users.events) == ["user.registered.v1"]
    assert app.users.events[0]["event"]["subject"] == body["user"]["id"]
    assert app.relay.count == 1


async def test_a_replayed_refresh_token_revokes_its_family_with_an_event(app: App) -> None:
    first = await _register(app)
    token = first["refresh_token"]
    for _ in range(2):  # the first token is spent twice over: beyond any grace
        rotated = await app.client.post("/api/auth/refresh", json={"refresh_token": token})
        assert rotated.status_code == 200
        token = rotated.json()["refresh_token"]

    replay = await app.client.post(
        "/api/auth/refresh", json={"refresh_token": first["refresh_token"]}
    )

    assert replay.status_code == 401
    sessions = app.sessions
    assert _types(sessions.events) == ["user.sessions_revoked.v1"]
    assert sessions.events[0]["event"]["data"]["reason"] == "refresh_reuse"
    assert sessions.docs[str(first["session_id"])].revoked
    assert app.relay.count == 2


async def test_logout_all_cuts_off_every_session_with_one_event(app: App) -> None:
    first = await _register(app)
    headers = bearer(str(first["access_token"]))

    response = await app.client.post("/api/auth/logout-all", headers=headers)

    assert response.status_code == 204
    assert _types(app.users.events)[-1] == "user.sessions_revoked.v1"
    assert app.users.events[-1]["event"]["data"]["reason"] == "logout_all"
    assert (await app.client.get("/api/auth/me", headers=headers)).status_code == 401
    user = next(iter(app.users.docs.values()))
    assert user.sessions_valid_after is not None
    assert user.sessions_valid_after - user.created_at < timedelta(minutes=1)
