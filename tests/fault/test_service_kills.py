"""Each service SIGKILLed under its own traffic, then started again on the same port and data.

Accounting asserted per service:
- auth (4 clients logging in and refreshing): every registered account logs in after the
  restart (lost == 0); every client whose last refresh was answered refreshes again with the
  token it holds; a refresh cut by the kill is counted and reported with its outcome.
- tasks, which is also "the relay killed between write and publish" (4 writers, a burst of
  creates, SIGKILL right after the last acknowledgement, with events still in the outboxes):
  a new process on the same database publishes every acknowledged create's event (lost == 0),
  under one event id per task (duplicates seen == 0); duplicates delivered and recovery reported.
- gateway (4 clients creating through it with an Idempotency-Key, retrying the same key after a
  failure, and reading back): every create ends acknowledged, the database holds exactly one task
  per key (duplicates == 0), failures are transport errors or 502/503/504, never 500.
"""

import asyncio
import time
import uuid
from collections import Counter

import httpx
import pytest
from pymongo import MongoClient

from common.outbox import PENDING
from tests.support.auth import PASSWORD, register, start_auth
from tests.support.gateway import gateway_env
from tests.support.infra import MONGO_URL, STATE_DIR, free_port, infra_env
from tests.support.processes import ServiceProcess
from tests.support.tasks import tasks_process
from tests.support.tokens import SigningKey
from tests.support.waiting import eventually
from tests.support.writers import Delivered, WriteLog, delivered

pytestmark = pytest.mark.e2e
CLIENTS = 4
BURST = 25  # creates per writer in the tasks burst


def _tasks_docs(db: str) -> list[dict[str, object]]:
    client: MongoClient[dict[str, object]] = MongoClient(MONGO_URL, serverSelectionTimeoutMS=5000)
    try:
        return list(client[db]["tasks"].find({}, {"_id": 1, PENDING: 1, "idem": 1}))
    finally:
        client.close()


async def test_auth_sigkilled_under_logins_and_refreshes_loses_no_account_or_session(
    prefix: str,
) -> None:
    auth = start_auth(prefix, {"AUTH_RELAY_POLL_S": "0.2"})
    stop = asyncio.Event()
    answered: Counter[str] = Counter()
    cut: dict[int, str] = {}  # client -> the request the kill interrupted
    try:
        await asyncio.to_thread(auth.wait_ready)
        async with httpx.AsyncClient(base_url=auth.url, timeout=15) as api:
            accounts = [await register(api) for _ in range(CLIENTS)]
            held = [body["refresh_token"] for body in accounts]

            async def client(n: int) -> None:
                email = accounts[n]["user"]["email"]
                while not stop.is_set():
                    try:
                        step = "login"
                        login = await api.post(
                            "/api/auth/login", json={"email": email, "password": PASSWORD}
                        )
                        answered[f"login {login.status_code}"] += 1
                        step = "refresh"
                        refresh = await api.post(
                            "/api/auth/refresh", json={"refresh_token": held[n]}
                        )
                        answered[f"refresh {refresh.status_code}"] += 1
                        if refresh.status_code == 200:
                            held[n] = refresh.json()["refresh_token"]
                    except httpx.TransportError:
                        cut[n] = step
                        return

            load = [asyncio.create_task(client(n)) for n in range(CLIENTS)]
            await eventually(lambda: answered["refresh 200"] >= 4 * CLIENTS, what="refreshes")
            auth.kill()
            stop.set()
            await asyncio.gather(*load)
            restarted = time.monotonic()
            auth.start()
            await asyncio.to_thread(auth.wait_ready)
            recovery_s = time.monotonic() - restarted
            logins = [
                await api.post(
                    "/api/auth/login", json={"email": a["user"]["email"], "password": PASSWORD}
                )
                for a in accounts
            ]
            after = [
                (await api.post("/api/auth/refresh", json={"refresh_token": held[n]})).status_code
                for n in range(CLIENTS)
            ]
    finally:
        auth.stop()
    print(
        f"auth killed: answered before={dict(answered)}, cut={cut}, "
        f"logins after={[r.status_code for r in logins]}, refreshes after={after}, "
        f"recovery={recovery_s:.1f}s"
    )
    assert set(answered) <= {"login 200", "refresh 200"}, answered
    assert [r.status_code for r in logins] == [200] * CLIENTS  # no account lost
    # A refresh cut by the kill may have rotated the token the client holds: only those may fail.
    kept = [n for n in range(CLIENTS) if cut.get(n) != "refresh"]
    assert [after[n] for n in kept] == [200] * len(kept)


async def test_tasks_sigkilled_after_a_burst_publishes_every_event_from_a_new_process(
    prefix: str,
) -> None:
    key = SigningKey.generate()
    token, _ = key.mint("tasks-kill-user")
    env = {"TASKS_REMINDERS_ENABLED": "false"}
    first = tasks_process(prefix, key, **env).start()
    second = None
    log = WriteLog()
    try:
        await asyncio.to_thread(first.wait_ready)
        headers = {"Authorization": f"Bearer {token}"}

        async def burst(n: int) -> None:
            async with httpx.AsyncClient(base_url=first.url, headers=headers, timeout=15) as api:
                for i in range(BURST):
                    log.record(await api.post("/api/tasks", json={"title": f"b{n}-{i}"}))

        await asyncio.gather(*(burst(n) for n in range(CLIENTS)))
        first.kill()  # right after the last acknowledgement: the relay had no time to finish
        pending = sum(
            1 for doc in await asyncio.to_thread(_tasks_docs, f"{prefix}_tasks") if doc.get(PENDING)
        )
        before = await delivered(prefix)
        started = time.monotonic()
        second = tasks_process(prefix, key, **env).start()

        async def published() -> Delivered | None:
            found = await delivered(prefix)
            return None if found.lost(log.ids) else found

        found = await eventually(published, 120, "every acknowledged create's event")
        recovery_s = time.monotonic() - started
    finally:
        first.kill()
        if second is not None:
            second.stop()
    print(
        f"tasks killed after {len(log.acked)} acknowledged creates: {pending} documents pending, "
        f"{len(before.event_ids)} published before the kill, lost={len(found.lost(log.ids))}, "
        f"duplicates delivered={found.duplicates_delivered}, seen={found.duplicates_seen}, "
        f"recovery={recovery_s:.1f}s (new process start to the last event)"
    )
    assert (len(log.acked), dict(log.refused)) == (CLIENTS * BURST, {})
    assert pending > 0  # the kill did land between write and publish
    assert found.lost(log.ids) == []
    assert found.duplicates_seen == 0


async def test_gateway_sigkilled_under_proxied_traffic_loses_and_duplicates_nothing(
    prefix: str,
) -> None:
    key = SigningKey.generate()
    token, _ = key.mint("gateway-kill-user")
    tasks = tasks_process(prefix, key, TASKS_REMINDERS_ENABLED="false").start()
    port = free_port()
    env = {**infra_env(prefix), **gateway_env(prefix, key, tasks.url), "GATEWAY_PORT": str(port)}
    log_path = STATE_DIR / "log" / "tests" / f"{prefix}-gateway.log"
    gateway = ServiceProcess("gateway", port, env, log_path).start()
    stop = asyncio.Event()
    keys: list[str] = []
    failures: Counter[str] = Counter()
    reads: Counter[int] = Counter()
    try:
        await asyncio.to_thread(tasks.wait_ready)
        await asyncio.to_thread(gateway.wait_ready)
        headers = {"Authorization": f"Bearer {token}"}

        async def client(n: int) -> None:
            async with httpx.AsyncClient(base_url=gateway.url, headers=headers, timeout=15) as api:
                while not stop.is_set():
                    idem = f"k-{n}-{uuid.uuid4().hex}"
                    keys.append(idem)
                    while True:  # the same key until acknowledged: the retry is idempotent
                        try:
                            reply = await api.post(
                                "/api/tasks",
                                json={"title": idem},
                                headers={"Idempotency-Key": idem},
                            )
                        except httpx.TransportError as exc:
                            failures[type(exc).__name__] += 1
                        else:
                            if reply.status_code == 201:
                                break
                            failures[str(reply.status_code)] += 1
                        await asyncio.sleep(
                            0.1
                        )  # a client's retry pause, not a wait on a condition
                    task_id = reply.json()["id"]
                    try:
                        reads[(await api.get(f"/api/tasks/{task_id}")).status_code] += 1
                    except httpx.TransportError as exc:
                        failures[type(exc).__name__] += 1

        load = [asyncio.create_task(client(n)) for n in range(CLIENTS)]
        await eventually(lambda: reads[200] >= 10 * CLIENTS, what="proxied traffic")
        gateway.kill()
        killed = time.monotonic()
        gateway.start()
        await asyncio.to_thread(gateway.wait_ready)
        recovery_s = time.monotonic() - killed
        served = reads[200]
        await eventually(lambda: reads[200] >= served + 10 * CLIENTS, what="traffic after")
        stop.set()
        await asyncio.gather(*load)
        docs = await asyncio.to_thread(_tasks_docs, f"{prefix}_tasks")
    finally:
        gateway.stop()
        tasks.stop()
    per_key = Counter(str(doc.get("idem", "")).removeprefix("k:") for doc in docs)
    duplicated = [k for k in keys if per_key[k] > 1]
    missing = [k for k in keys if per_key[k] == 0]
    print(
        f"gateway killed: {len(keys)} creates acknowledged, failures={dict(failures)}, "
        f"reads={dict(reads)}, duplicates={len(duplicated)}, lost={len(missing)}, "
        f"recovery={recovery_s:.1f}s"
    )
    assert set(failures) <= {
        "502",
        "503",
        "504",
        "ConnectError",
        "ReadError",
        "RemoteProtocolError",
    }
    assert failures.total() > 0  # the kill did cut requests
    assert set(reads) == {200}, reads
    assert (missing, duplicated) == ([], [])
    assert len(docs) == len(keys)
