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
from tests.support.tasks import eventually


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
    `x-echo-cache-control` / `x-echo-vary` set those response headers.
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
        for name in ("cache-control", "vary"):
            value = request.headers.get(f"x-echo-{name}")
            if value:
                headers[name] = value
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
