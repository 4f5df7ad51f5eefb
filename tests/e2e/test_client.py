"""The Python client against the real gateway, auth and tasks: refresh, revalidation, If-Match."""

import uuid
from collections.abc import AsyncIterator

import pytest

from client import ApiError, TaskbusClient, TokenPair
from tests.support.auth import PASSWORD, unique_email
from tests.support.system import running_system

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
async def gateway_url() -> AsyncIterator[str]:
    async with running_system(f"cli{uuid.uuid4().hex[:10]}", ["auth", "tasks", "gateway"]) as procs:
        yield procs["gateway"].url


async def test_a_refused_access_token_is_refreshed_silently(gateway_url: str) -> None:
    async with TaskbusClient(gateway_url) as client:
        email = unique_email()
        await client.register(email, PASSWORD, "Cli")
        refresh = client.auth.tokens.refresh_token if client.auth.tokens else ""
        # Stands for an expired access token: the gateway refuses it, the client refreshes.
        client.auth.tokens = TokenPair("not-a-valid-token", refresh)
        assert (await client.me())["email"] == email
        assert client.auth.tokens.access_token != "not-a-valid-token"
        assert client.auth.tokens.refresh_token != refresh  # rotated


async def test_repeat_reads_revalidate_and_updates_use_if_match(gateway_url: str) -> None:
    async with TaskbusClient(gateway_url) as client, TaskbusClient(gateway_url) as other_tab:
        email = unique_email()
        await client.register(email, PASSWORD, "Cli")
        await other_tab.login(email, PASSWORD)
        task = await client.create_task(title="write the client")

        assert await client.get_task(task["id"]) == await client.get_task(task["id"])
        assert client.cache.hits == 1  # the second read was a 304 turned into the stored body

        await other_tab.get_task(task["id"])
        await other_tab.update_task(task["id"], title="changed elsewhere")
        with pytest.raises(ApiError) as raised:  # this client's ETag is stale now
            await client.update_task(task["id"], title="lost update")
        assert raised.value.status == 412
        assert (await client.get_task(task["id"]))["title"] == "changed elsewhere"
