"""API documentation served by the gateway: combined OpenAPI, Swagger UI, AsyncAPI of the events."""

import asyncio
import copy
import time
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
import orjson
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from common.problems import problem_response
from gateway.contract import GATEWAY_PATHS as OWN_PATHS
from gateway.contract import edge
from gateway.proxy import fetch_json

FETCH_TIMEOUT_S = 2.0
# A partial document (a service was down) is retried soon instead of being kept for long.
PARTIAL_CACHE_S = 2.0
SWAGGER_UI = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Taskbus API</title>
<link rel="stylesheet" href="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css">
</head><body><div id="ui"></div>
<script src="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({url: "/openapi.json", dom_id: "#ui"});</script>
</body></html>"""
GATEWAY_PATHS: dict[str, Any] = {
    **OWN_PATHS,
    "/asyncapi.json": {
        "get": {"summary": "AsyncAPI of every Kafka topic", "responses": {"200": {}}}
    },
}


def merge(documents: Mapping[str, Mapping[str, Any] | None]) -> dict[str, Any]:
    """One OpenAPI document from each service's, with the gateway's own routes and answers
    (gateway.contract); a missing service is named, not fatal."""
    schemas: dict[str, Any] = {}
    merged: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "Taskbus API", "version": "1"},
        "paths": copy.deepcopy(GATEWAY_PATHS),
        "components": {"schemas": schemas},
    }
    missing = sorted(name for name, doc in documents.items() if doc is None)
    for name, doc in documents.items():
        if doc is None:
            continue
        renamed = _rename_collisions(name, doc, schemas)
        merged["paths"].update(renamed.get("paths", {}))
        for section, items in renamed.get("components", {}).items():
            merged["components"].setdefault(section, {}).update(items)
    if missing:
        merged["info"]["description"] = "Unavailable now, paths missing: " + ", ".join(missing)
        merged["info"]["x-taskbus-unavailable"] = missing
    return edge(merged)


def _rename_collisions(
    service: str, doc: Mapping[str, Any], seen: Mapping[str, Any]
) -> Mapping[str, Any]:
    """Schemas named like a different schema of another service get the service's prefix."""
    own = doc.get("components", {}).get("schemas", {})
    clashing = [name for name, schema in own.items() if name in seen and seen[name] != schema]
    if not clashing:
        return doc
    text = orjson.dumps(doc).decode()
    for name in clashing:
        text = text.replace(
            f'"#/components/schemas/{name}"', f'"#/components/schemas/{service}.{name}"'
        )
    renamed: dict[str, Any] = orjson.loads(text)
    schemas = renamed["components"]["schemas"]
    for name in clashing:
        schemas[f"{service}.{name}"] = schemas.pop(name)
    return renamed


class ApiDocs:
    """Fetches and merges the services' OpenAPI documents, cached for a while."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        sources: Mapping[str, str],
        cache_s: float,
        asyncapi: Callable[[], Any],
    ) -> None:
        self._session = session
        self._sources = dict(sources)
        self._cache_s = cache_s
        self._asyncapi = asyncapi
        self._document = b""
        self._expires = 0.0

    async def openapi(self) -> bytes:
        """The combined document, serialised."""
        if time.monotonic() < self._expires:
            return self._document
        names = list(self._sources)
        fetched = await asyncio.gather(*(self._fetch(self._sources[n]) for n in names))
        merged = merge(dict(zip(names, fetched, strict=True)))
        self._document = orjson.dumps(merged)
        partial = any(doc is None for doc in fetched)
        self._expires = time.monotonic() + (PARTIAL_CACHE_S if partial else self._cache_s)
        return self._document

    async def _fetch(self, url: str) -> Mapping[str, Any] | None:
        try:
            doc = await fetch_json(self._session, url, FETCH_TIMEOUT_S)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None
        return doc if isinstance(doc, dict) else None

    def asyncapi(self) -> bytes:
        """The AsyncAPI document, serialised."""
        return orjson.dumps(self._asyncapi())


def doc_routes(current: Callable[[], ApiDocs | None]) -> list[Route]:
    """/openapi.json, /docs and /asyncapi.json; `current` is read per call (lifespan fills it)."""

    async def openapi(request: Request) -> Response:
        docs = current()
        if docs is None:
            return problem_response(503, "starting up", instance=request.url.path)
        return Response(await docs.openapi(), media_type="application/json")

    async def swagger(_: Request) -> Response:
        return HTMLResponse(SWAGGER_UI)

    async def asyncapi(request: Request) -> Response:
        docs = current()
        if docs is None:
            return problem_response(503, "starting up", instance=request.url.path)
        return Response(docs.asyncapi(), media_type="application/json")

    return [
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/docs", swagger, methods=["GET"]),
        Route("/asyncapi.json", asyncapi, methods=["GET"]),
    ]
