"""Without a static key set, the tasks service verifies tokens with keys from the JWKS URL."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from tests.support.infra import free_port
from tests.support.tasks import tasks_process
from tests.support.tokens import SigningKey
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e


def _serve_jwks(port: int, jwks: dict[str, object]) -> ThreadingHTTPServer:
    body = json.dumps(jwks).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/jwks.json" else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            """Quiet."""

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


async def test_keys_come_from_the_jwks_url_and_an_unreachable_one_is_503(
    prefix: str,
) -> None:
    jwks_port = free_port()
    key = SigningKey.generate("rotating-key")
    token, _ = key.mint("someone")
    proc = tasks_process(prefix, None, TASKS_JWKS_URL=f"http://127.0.0.1:{jwks_port}/jwks.json")
    proc.start().wait_ready()
    server = None
    try:
        async with httpx.AsyncClient(
            base_url=proc.url, headers={"Authorization": f"Bearer {token}"}, timeout=15
        ) as api:
            down = await api.get("/api/tasks")
            assert down.status_code == 503
            assert down.headers["content-type"] == "application/problem+json"

            server = _serve_jwks(jwks_port, key.jwks())

            async def accepted() -> bool:
                return (await api.get("/api/tasks")).status_code == 200

            await eventually(accepted)  # after the cache's refetch interval
            forged, _ = SigningKey.generate("rotating-key").mint("someone")
            refused = await api.get("/api/tasks", headers={"Authorization": f"Bearer {forged}"})
            assert refused.status_code == 401
    finally:
        proc.stop()
        if server is not None:
            server.shutdown()
            server.server_close()
