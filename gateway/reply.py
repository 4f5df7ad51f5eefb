"""The response value the gateway passes around, caches and sends, plus problem replies."""

from collections.abc import Mapping
from dataclasses import dataclass

from starlette.types import Send

from common.problems import PROBLEM_JSON, problem_body

Header = tuple[bytes, bytes]
_PROBLEM_JSON = PROBLEM_JSON.encode()


@dataclass(frozen=True, slots=True)
class Reply:
    """A complete HTTP response."""

    status: int
    headers: list[Header]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        """The first value of a header (name in lower case)."""
        return next((v for k, v in self.headers if k == name), None)


def problem(
    status: int, detail: str, instance: str, headers: Mapping[str, str] | None = None
) -> Reply:
    """An RFC 9457 problem reply."""
    body = problem_body(status, detail, instance=instance)
    kept = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    return Reply(status, [*kept, (b"content-type", _PROBLEM_JSON)], body)


async def send_reply(send: Send, reply: Reply, extra: list[Header], head: bool = False) -> None:
    """Write the reply to the ASGI connection (no body on 304 or for HEAD)."""
    body = b"" if head or reply.status == 304 else reply.body
    headers = [*reply.headers, *extra]
    if reply.status != 304:
        headers.append((b"content-length", str(len(reply.body)).encode()))
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
