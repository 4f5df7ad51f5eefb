"""The Python client: silent refresh on 401 (once), ETag revalidation, problems as errors."""

import httpx
import pytest

from client import ApiError, TaskbusClient, TokenPair


def _client(handler: httpx.MockTransport, tokens: TokenPair | None = None) -> TaskbusClient:
    return TaskbusClient("http://gw.test", tokens=tokens, transport=handler)


async def test_expired_access_token_is_refreshed_once_and_the_request_replayed() -> None:
    seen: list[tuple[str, str | None]] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.path, request.headers.get("authorization")))
        if request.url.path == "/api/auth/refresh":
            assert request.read() == b'{"refresh_token":"r1"}'
            return httpx.Response(200, json={"access_token": "a2", "refresh_token": "r2"})
        if request.headers["authorization"] == "Bearer a1":
            return httpx.Response(401, json={"status": 401, "detail": "expired"})
        return httpx.Response(200, json={"id": "u1"})

    async with _client(httpx.MockTransport(handle), TokenPair("a1", "r1")) as client:
        assert await client.me() == {"id": "u1"}
        assert client.auth.tokens == TokenPair("a2", "r2")
    assert seen == [
        ("/api/auth/me", "Bearer a1"),
        ("/api/auth/refresh", None),
        ("/api/auth/me", "Bearer a2"),
    ]


async def test_failed_refresh_surfaces_the_401_without_looping() -> None:
    calls = 0

    def handle(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(
            401,
            json={"status": 401, "detail": "invalid token"},
            headers={"content-type": "application/problem+json"},
        )

    async with _client(httpx.MockTransport(handle), TokenPair("a1", "spent")) as client:
        with pytest.raises(ApiError) as raised:
            await client.me()
    assert raised.value.status == 401
    assert raised.value.problem["detail"] == "invalid token"
    assert calls == 2  # the request and one refresh attempt, nothing more


async def test_repeat_get_revalidates_and_serves_the_stored_body_on_304() -> None:
    sent_etags: list[str | None] = []

    def handle(request: httpx.Request) -> httpx.Response:
        sent_etags.append(request.headers.get("if-none-match"))
        if request.headers.get("if-none-match") == '"v1"':
            return httpx.Response(304, headers={"etag": '"v1"'})
        return httpx.Response(200, json={"id": "t1", "title": "x"}, headers={"etag": '"v1"'})

    async with _client(httpx.MockTransport(handle), TokenPair("a", "r")) as client:
        first = await client.get_task("t1")
        second = await client.get_task("t1")
    assert first == second == {"id": "t1", "title": "x"}
    assert sent_etags == [None, '"v1"']
    assert client.cache.hits == 1


async def test_update_sends_if_match_with_the_last_seen_etag() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        if request.method == "PATCH":
            if request.headers.get("if-match") != '"3"':
                return httpx.Response(412, json={"status": 412, "detail": "stale"})
            return httpx.Response(200, json={"id": "t1", "version": 4}, headers={"etag": '"4"'})
        return httpx.Response(200, json={"id": "t1", "version": 3}, headers={"etag": '"3"'})

    async with _client(httpx.MockTransport(handle), TokenPair("a", "r")) as client:
        await client.get_task("t1")
        assert (await client.update_task("t1", title="y"))["version"] == 4
        with pytest.raises(ApiError) as raised:  # "4" is remembered now; the fake wants "3"
            await client.update_task("t1", title="z")
    assert raised.value.status == 412


async def test_a_listing_read_after_a_write_is_revalidated_not_served_stale() -> None:
    items: list[dict[str, str]] = []

    def handle(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            items.append({"id": f"t{len(items) + 1}"})
            return httpx.Response(201, json=items[-1], headers={"etag": f'"{len(items)}"'})
        etag = f'"list-{len(items)}"'
        headers = {"etag": etag, "cache-control": "private, no-cache"}  # as the gateway sends
        if request.headers.get("if-none-match") == etag:
            return httpx.Response(304, headers=headers)
        return httpx.Response(200, json={"items": items, "next_cursor": None}, headers=headers)

    async with _client(httpx.MockTransport(handle), TokenPair("a", "r")) as client:
        assert (await client.list_tasks())["items"] == []
        assert (await client.list_tasks())["items"] == []
        await client.create_task(title="x")
        assert (await client.list_tasks())["items"] == [{"id": "t1"}]
    assert client.cache.hits == 1  # only the unchanged second listing came from the store


async def test_two_clients_never_share_a_stored_body() -> None:
    sent_etags: list[str | None] = []

    def handle(request: httpx.Request) -> httpx.Response:
        sent_etags.append(request.headers.get("if-none-match"))
        return httpx.Response(200, json={"id": "t1"}, headers={"etag": '"v1"'})

    transport = httpx.MockTransport(handle)
    async with _client(transport, TokenPair("a", "r")) as alice, _client(transport) as bob:
        await alice.get_task("t1")
        await bob.get_task("t1")
    assert sent_etags == [None, None]  # bob's first read is not a revalidation of alice's copy
    assert alice.cache.hits == bob.cache.hits == 0


async def test_a_create_whose_answer_is_lost_is_retried_with_its_key_and_made_once() -> None:
    created: dict[str, dict[str, str]] = {}  # by Idempotency-Key: what the service stored
    answers = iter([504, 503, 201])

    def handle(request: httpx.Request) -> httpx.Response:
        key = request.headers["idempotency-key"]
        task = created.setdefault(key, {"id": f"t{len(created)}", "title": "x"})
        # The first attempts did create the task; only their answers were lost at the edge.
        status = next(answers)
        if status != 201:
            return httpx.Response(status, json={"status": status}, headers={"Retry-After": "0"})
        return httpx.Response(201, json=task)

    async with _client(httpx.MockTransport(handle), TokenPair("a1", "r1")) as client:
        task = await client.create_task(title="x")

    assert len(created) == 1
    assert task == {"id": "t0", "title": "x"}


async def test_a_create_refused_for_its_content_is_not_retried() -> None:
    calls = 0

    def handle(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(422, json={"status": 422, "detail": "title is required"})

    async with _client(httpx.MockTransport(handle), TokenPair("a1", "r1")) as client:
        with pytest.raises(ApiError) as raised:
            await client.create_task()

    assert raised.value.status == 422
    assert calls == 1
