"""Issue 12 item 12a: the cache key is exactly the query the service reads.

Before: the key sorted every (name, value) pair, so `?status=todo&status=done` (the service reads
the last value: the "done" list) and `?status=done&status=todo` (the "todo" list) shared one
entry, and the second request was answered with the first one's cached list. Now the pairs are
ordered by name only, a stable sort: repeated parameters keep their order and their own key.
"""

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from gateway.cache import cache_key
from tests.support.auth import PASSWORD, unique_email
from tests.support.system import running_system
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e


def test_repeated_parameters_keep_their_order_in_the_key() -> None:
    def key(query: bytes) -> str:
        return cache_key("u", "1", "/api/tasks", query, [])

    assert key(b"status=done&status=todo") != key(b"status=todo&status=done")
    # Distinct names may still come in any order: the service reads them by name.
    assert key(b"limit=5&status=done&status=todo") == key(b"status=done&status=todo&limit=5")
    # Decoded as Starlette decodes it: one spelling of the same value is one key.
    assert key(b"status=do%6Ee") == key(b"status=done")


@pytest.fixture(scope="module")
async def client() -> AsyncIterator[httpx.AsyncClient]:
    prefix = f"ck{uuid.uuid4().hex[:10]}"
    async with (
        running_system(prefix, ["auth", "tasks", "gateway"]) as procs,
        httpx.AsyncClient(base_url=procs["gateway"].url, timeout=30) as http,
    ):
        yield http


async def test_a_cached_list_never_answers_the_same_parameters_in_another_order(
    client: httpx.AsyncClient,
) -> None:
    registered = await client.post(
        "/api/auth/register", json={"email": unique_email(), "password": PASSWORD, "name": "K"}
    )
    assert registered.status_code == 201, registered.text
    me = {"Authorization": f"Bearer {registered.json()['access_token']}"}
    for title, status in (("finished", "done"), ("open", "todo")):
        created = await client.post(
            "/api/tasks", headers=me, json={"title": title, "status": status}
        )
        assert created.status_code == 201, created.text

    async def done_list_cached() -> httpx.Response | None:
        reply = await client.get("/api/tasks?status=todo&status=done", headers=me)
        return reply if reply.headers["x-cache"] == "HIT" else None

    # The creates' events may orphan the first entry once more; wait until it is served cached.
    cached: httpx.Response = await eventually(done_list_cached)
    assert [t["title"] for t in cached.json()["items"]] == ["finished"]

    reply = await client.get("/api/tasks?status=done&status=todo", headers=me)
    assert reply.status_code == 200, reply.text
    assert reply.headers["x-cache"] == "MISS"
    assert [t["title"] for t in reply.json()["items"]] == ["open"]
