"""Issue 12 item 12b: the answer to a request uvicorn cannot parse carries the edge's headers.

Before: uvicorn answered a malformed request itself, before the gateway's app ran, with a
text/plain 400 and none of the security headers. Now the gateway process runs its own protocol
(gateway/protocol.py): a 400 problem+json with the helmet headers, and the connection closed.
"""

import asyncio
import uuid
from collections.abc import AsyncIterator

import orjson
import pytest

from gateway.headers import DEFAULT_CSP, HELMET_HEADERS
from tests.support.gateway import gateway_env
from tests.support.infra import STATE_DIR, free_port, infra_env
from tests.support.processes import ServiceProcess
from tests.support.tokens import SigningKey

pytestmark = pytest.mark.e2e

MALFORMED = [
    b"GET / HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",
    b"GET /api/tasks HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03 TLS to a plain port\r\n\r\n",
]


@pytest.fixture(scope="module")
async def gateway_url() -> AsyncIterator[tuple[str, int]]:
    prefix = f"gwp{uuid.uuid4().hex[:10]}"
    port = free_port()
    env = {
        **infra_env(prefix),
        **gateway_env(prefix, SigningKey.generate(), f"http://127.0.0.1:{free_port()}"),
        "GATEWAY_PORT": str(port),
    }
    proc = ServiceProcess("gateway", port, env, STATE_DIR / "log" / "tests" / f"{prefix}.log")
    proc.start()
    try:
        await asyncio.to_thread(proc.wait_ready)
        yield ("127.0.0.1", port)
    finally:
        await asyncio.to_thread(proc.stop)


async def _exchange(address: tuple[str, int], request: bytes) -> bytes:
    """Send `request` byte for byte; everything the server sends before it closes."""
    reader, writer = await asyncio.open_connection(*address)
    writer.write(request)
    await writer.drain()
    try:
        async with asyncio.timeout(10):
            return await reader.read()  # until EOF: the server closes after its 400
    finally:
        writer.close()


@pytest.mark.parametrize("request_bytes", MALFORMED, ids=["header", "two-lengths", "tls"])
async def test_unparseable_requests_get_a_problem_with_the_security_headers(
    gateway_url: tuple[str, int], request_bytes: bytes
) -> None:
    raw = await _exchange(gateway_url, request_bytes)
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    assert status_line.startswith("HTTP/1.1 400"), raw
    headers = {name.lower(): value for name, value in (line.split(": ", 1) for line in lines)}
    assert headers["content-type"] == "application/problem+json"
    assert headers["connection"] == "close"
    assert headers["content-security-policy"] == DEFAULT_CSP
    for name, value in HELMET_HEADERS:
        assert headers[name.decode()] == value.decode(), name
    assert "server" not in headers
    problem = orjson.loads(body)
    assert problem["status"] == 400
    assert problem["title"] == "Bad Request"
