"""With its database stopped, tasks answers 503 problem+json with Retry-After, promptly, on the
same keep-alive connection; readiness names Mongo (not Kafka); after the restart nothing
acknowledged is lost."""

import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.support.ferretdb import FerretDB
from tests.support.tasks import tasks_process
from tests.support.tokens import SigningKey

pytestmark = pytest.mark.e2e
GATEWAY_TASKS_DEADLINE_S = 5.0


async def test_stopped_database_is_503_within_the_deadline_and_loses_nothing(
    prefix: str, tmp_path: Path
) -> None:
    db = FerretDB(tmp_path / "ferretdb").start()
    key = SigningKey.generate()
    token, _ = key.mint("db-down-user")
    service = tasks_process(prefix, key, TASKBUS_MONGO_URL=db.url).start()
    assert db.proc is not None
    try:
        service.wait_ready()
        auth = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=service.url, headers=auth, timeout=15) as api:
            ready = await api.get("/readyz")
            # Kafka itself is not needed to serve: only the revocations read from it at start.
            assert ready.json()["checks"] == {"mongo": "ok", "revocations": "ok"}
            acked = [
                (await api.post("/api/tasks", json={"title": f"t{i}"})).json()["id"]
                for i in range(3)
            ]

            os.kill(db.proc.pid, signal.SIGSTOP)
            refused = 0
            calls = [
                ("GET", f"/api/tasks/{acked[0]}", None),
                ("POST", "/api/tasks", {"title": "x"}),
            ]
            for method, path, body in calls:
                started = time.monotonic()
                response = await api.request(method, path, json=body)
                elapsed = time.monotonic() - started
                assert response.status_code == 503, response.text
                assert response.headers["content-type"] == "application/problem+json"
                assert int(response.headers["retry-after"]) > 0
                assert elapsed < GATEWAY_TASKS_DEADLINE_S
                refused += 1
            assert (await api.get("/readyz")).status_code == 503  # Mongo stays in readiness

            os.kill(db.proc.pid, signal.SIGCONT)
            found = [(await api.get(f"/api/tasks/{task_id}")).status_code for task_id in acked]
        # Accounting: 3 acknowledged, 2 refused with 503, 0 lost.
        assert (len(acked), refused, found.count(200)) == (3, 2, 3)
    finally:
        os.kill(db.proc.pid, signal.SIGCONT)
        service.kill()
        db.kill()
