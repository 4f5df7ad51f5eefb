"""A latency-injecting TCP proxy: what a slow upstream (a slow query, a congested link) looks like
to the process in front of it."""

import asyncio
import contextlib


class SlowProxy:
    """Forwards 127.0.0.1:<port> to an upstream; the upstream's answer to a request containing
    `match` (every request when empty) reaches the client `delay_s` late: a slow query, not a
    lost one (the upstream did the work). Another user's requests over the same pool are not
    held. Change both at any time.
    """

    def __init__(self, upstream_port: int, delay_s: float = 0.0, match: bytes = b"") -> None:
        self.upstream_port = upstream_port
        self.delay_s = delay_s
        self.match = match
        self.held = 0  # chunks delayed so far
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        """The proxy's base URL."""
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def start(self) -> "SlowProxy":
        """Listen on a free port."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def stop(self) -> None:
        """Stop listening and drop every connection."""
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):  # Server.close_clients is Python 3.13
                writer.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self._writers |= {writer, up_writer}
        slow = asyncio.Event()  # the request in flight on this connection is to be held
        pumps = [
            asyncio.create_task(self._requests(reader, up_writer, slow)),
            asyncio.create_task(self._answers(up_reader, writer, slow)),
        ]
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for pump in pumps:
            pump.cancel()
        for w in (writer, up_writer):
            self._writers.discard(w)
            w.close()
            with contextlib.suppress(OSError):
                await w.wait_closed()

    async def _requests(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, slow: asyncio.Event
    ) -> None:
        while chunk := await source.read(65536):
            if self.delay_s > 0 and self.match in chunk:
                slow.set()
            sink.write(chunk)
            await sink.drain()

    async def _answers(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, slow: asyncio.Event
    ) -> None:
        while chunk := await source.read(65536):
            if slow.is_set():
                slow.clear()
                self.held += 1
                await asyncio.sleep(self.delay_s)  # the injected latency itself
            sink.write(chunk)
            await sink.drain()
