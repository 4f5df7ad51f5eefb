"""What the gateway itself adds to the services' OpenAPI: security and the edge's own answers.

The services document their routes; only the gateway knows which routes need a token (the route
table), that it rate limits (429), bounds headers (431) and bodies (413), refuses malformed
requests (400), answers for an upstream that is down, broken or slow (503, 502, 504) and says
how the cache served a reply (X-Cache). `edge` writes that into the merged document so the
published contract is what a client of the gateway meets.
"""

from typing import Any

from common.openapi import SCHEMAS, add_problems, problem
from gateway.routes import TABLE

Doc = dict[str, Any]
BEARER = "bearer"
SECURITY_SCHEMES: Doc = {BEARER: {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}}
# Every request: unparseable or dot segments (400), headers too large (431).
EVERYWHERE = (400, 431)
# Every proxied request: rate limits, and the upstream down, broken or slow.
PROXIED = (429, 502, 503, 504)
X_CACHE = {
    "description": "how the gateway's cache served this answer",
    "required": True,
    "schema": {"type": "string", "enum": ["HIT", "MISS", "BYPASS"]},
}
_JSON = {"application/json": {"schema": {"type": "object"}}}


def _own(summary: str, ok: Doc, *statuses: int) -> Doc:
    responses = {"200": {"description": "ok", **ok}}
    responses.update({str(s): problem(s) for s in statuses})
    return {"get": {"summary": summary, "security": [], "responses": responses}}


# The gateway's own routes outside /api (GET /metrics is served on a listener of its own).
GATEWAY_PATHS: dict[str, Doc] = {
    "/livez": _own("Liveness probe (never rate limited)", {"content": _JSON}),
    "/readyz": _own("Readiness probe (Redis, Kafka)", {"content": _JSON}, 429, 503),
    "/openapi.json": _own("This document", {"content": _JSON}, 429, 503),
    "/docs": _own("Swagger UI of this document", {"content": {"text/html": {}}}, 429),
}


def _security(path: str, operation: Doc) -> list[Doc]:
    route = TABLE.match(path)
    if route is None or route.public:
        # A public route that still reads a token when sent (logout) takes it optionally.
        return [{}, {BEARER: []}] if route is not None and operation.get("security") else []
    return [{BEARER: []}]


def _proxied(path: str, operation: Doc) -> None:
    """A proxied operation: its security, the edge's problems, X-Cache on what was forwarded."""
    operation["security"] = _security(path, operation)
    route = TABLE.match(path)
    add_problems(operation, PROXIED)
    if route is not None and not route.public:
        add_problems(operation, (401,))
    if "requestBody" in operation:
        add_problems(operation, (413,))
    for status, response in operation.get("responses", {}).items():
        if status[:1] in ("2", "3"):
            response.setdefault("headers", {})["X-Cache"] = dict(X_CACHE)


def edge(document: Doc) -> Doc:
    """The merged document as the gateway serves it (changed in place and returned)."""
    paths: Doc = document.setdefault("paths", {})
    for path, item in paths.items():
        proxied = TABLE.match(path) is not None
        for operation in item.values():
            if proxied:
                _proxied(path, operation)
            else:
                operation["security"] = []
                # The per-IP "meta" limit covers every own route but /livez.
                add_problems(operation, (429,) if path != "/livez" else ())
            add_problems(operation, EVERYWHERE)
            for response in operation["responses"].values():
                response.setdefault("description", "ok")
    components = document.setdefault("components", {})
    components["securitySchemes"] = dict(SECURITY_SCHEMES)
    components.setdefault("schemas", {}).update({k: dict(v) for k, v in SCHEMAS.items()})
    document.pop("security", None)
    return document
