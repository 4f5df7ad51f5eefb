"""Real HTTP servers on free ports inside the test process: an ASGI app under uvicorn, and an
aiohttp "upstream" that echoes and counts what it receives."""

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from aiohttp import web
from starlette.types import ASGIApp

from tests.support.infra import free_port
from tests.support.waiting import eventually


@asynccontextmanager
async def serve_asgi(app: ASGIApp, port: int | None = None) -> AsyncIterator[str]:
    """Serve `app` (lifespan included) on 127.0.0.1; yields its base URL."""
    port = port or free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        lifespan="on",
        log_config=None,
        access_log=False,
        server_header=False,
        proxy_headers=False,  # as in production (common.runner): the app decides whom to trust
    )
    server = uvicorn.Server(config)
    # uvicorn installs signal handlers only in the main thread's own run(); serve() is enough.
    task = asyncio.create_task(server.serve())

    async def started() -> bool:
        if task.done():  # its start-up failed: say why instead of waiting out the deadline
            task.result()
            raise RuntimeError("server exited during start-up")
        return server.started

    await eventually(started, within=60)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


class EchoUpstream:
    """A stand-in service: answers every path with what it received, and counts requests.

    `GET .../slow?s=N` sleeps N seconds first; a `x-echo-status` request header sets the status;
    `x-echo-cache-control` / `x-echo-vary` / `x-echo-location` set those response headers
    (`{origin}` in a Location: this upstream's own base URL).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.hits: Counter[str] = Counter()
        self.requests: list[dict[str, Any]] = []
        self.bodies: dict[str, Any] = {}
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.hits[request.path] += 1
        body = await request.read()
        seen = {
            "service": self.name,
            "method": request.method,
            "path": request.path,
            "raw_path": request.raw_path,
            "query": request.query_string,
            "headers": {k.lower(): v for k, v in request.headers.items()},
            "body": body.decode(errors="replace"),
            "n": self.hits[request.path],
            "data": self.bodies.get(request.path),
        }
        self.requests.append(seen)
        if request.path.endswith("/slow"):
            await asyncio.sleep(float(request.query.get("s", "5")))
        if request.method in {"PUT", "PATCH", "POST"} and body:
            self.bodies[request.path] = body.decode(errors="replace")
        headers = {"Server": "upstream/1.0", "X-Powered-By": "Express"}
        for name in ("cache-control", "vary", "location"):
            value = request.headers.get(f"x-echo-{name}")
            if value:
                headers[name] = value.replace("{origin}", self.url)
        status = int(request.headers.get("x-echo-status", "200"))
        return web.json_response(seen, status=status, headers=headers)

    async def start(self, port: int | None = None) -> "EchoUpstream":
        """Listen on a free port."""
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        port = port or free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


class OneShotUpstream:
    """Answers the first request on each connection (keep-alive, no `Connection: close`), then
    closes the connection when the next request arrives on it, unanswered: the race of a
    service closing an idle keep-alive connection just as the pool reuses it."""

    def __init__(self) -> None:
        self.received: list[str] = []  # request lines, answered or not
        self.url = ""
        self._server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        answered = False
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                lines = head.decode("latin-1").split("\r\n")
                self.received.append(lines[0])
                length = next(
                    (
                        int(v)
                        for k, _, v in (ln.partition(":") for ln in lines)
                        if k.lower() == "content-length"
                    ),
                    0,
                )
                await reader.readexactly(length)
                if answered:
                    break
                answered = True
                body = b'{"ok":true}'
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    + f"content-length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def start(self) -> "OneShotUpstream":
        """Listen on a free port."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
