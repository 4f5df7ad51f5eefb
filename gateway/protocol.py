"""uvicorn's HTTP protocol with the edge's own answer to a request it cannot parse.

uvicorn answers an unparseable request itself, before any ASGI app runs, with a text/plain 400
and none of the security headers (issue 12 item 12b). The gateway's protocol answers it like
every other refusal: 400 application/problem+json with the helmet headers, then closes.
"""

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from common.problems import PROBLEM_JSON, problem_body
from gateway.headers import security_headers


class EdgeHttpProtocol(HttpToolsProtocol):
    """HttpToolsProtocol whose own 400 is a problem document with the security headers."""

    def send_400_response(self, msg: str) -> None:
        """The parse-error answer: the connection is unusable after it, so close it."""
        body = problem_body(400, msg)
        content = [STATUS_LINE[400]]
        headers = [
            *self.server_state.default_headers,
            *security_headers("/"),
            (b"content-type", PROBLEM_JSON.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        for name, value in headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend([b"\r\n", body])
        self.transport.write(b"".join(content))
        self.transport.close()
