"""OpenAPI pieces every service shares: the Problem schema and the problem answers routes declare.

A route lists what it can answer besides success with `responses=problems(...)`; `document_problems`
(installed by `common.problems.install_problem_handlers`) adds what every route of a service can
answer, puts the Problem schema in the document and turns FastAPI's own 422 into problem+json,
so the published contract says what the code sends.
"""

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute

from common.problems import PROBLEM_JSON

Doc = dict[str, Any]
PROBLEM_REF = "#/components/schemas/Problem"
PROBLEM_SCHEMA: Mapping[str, Any] = {
    "title": "Problem",
    "description": "RFC 9457 problem details: the one error format of every Taskbus answer.",
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "errors": {"type": "array", "items": {"$ref": "#/components/schemas/FieldError"}},
    },
}
FIELD_ERROR_SCHEMA: Mapping[str, Any] = {
    "title": "FieldError",
    "description": "One refused input: where (loc), why (msg) and the kind of error (type).",
    "type": "object",
    "required": ["loc", "msg", "type"],
    "properties": {
        "loc": {"type": "array", "items": {"type": "string"}},
        "msg": {"type": "string"},
        "type": {"type": "string"},
    },
}
SCHEMAS: Mapping[str, Mapping[str, Any]] = {
    "Problem": PROBLEM_SCHEMA,
    "FieldError": FIELD_ERROR_SCHEMA,
}
_SECONDS = {"type": "string", "pattern": "^[0-9]+$"}
# Headers that always come with a status (the code sets them on every such answer).
STATUS_HEADERS: Mapping[int, Mapping[str, Any]] = {
    401: {"WWW-Authenticate": {"required": True, "schema": {"type": "string"}}},
    429: {"Retry-After": {"description": "seconds to wait", "required": True, "schema": _SECONDS}},
    503: {"Retry-After": {"description": "seconds to wait", "required": True, "schema": _SECONDS}},
}
DESCRIPTIONS: Mapping[int, str] = {
    400: "malformed request",
    401: "missing or invalid access token (one answer whatever is wrong with it)",
    404: "no such resource (also: another user's)",
    413: "request body too large",
    422: "invalid input: the fields refused are listed in `errors`",
    429: "rate limited (Retry-After)",
    503: "a dependency is unavailable or the service is overloaded; retry (Retry-After)",
}
# What every route of a service can answer: its database down, or the load shedder (503).
SERVICE_WIDE = (503,)
# What a route that takes an access token can answer.
AUTHENTICATED = (401,)


def operation_id(route: APIRoute) -> str:
    """A route's operationId: its function's name (`create_task`, not FastAPI's
    `create_task_api_tasks_post`), what a generated client names its call."""
    return route.name


def problem(status: int, description: str | None = None) -> Doc:
    """One OpenAPI response: a problem+json document, with the headers that status carries."""
    response: Doc = {
        "description": description or DESCRIPTIONS.get(status, "error"),
        "content": {PROBLEM_JSON: {"schema": {"$ref": PROBLEM_REF}}},
    }
    if status in STATUS_HEADERS:
        response["headers"] = {name: dict(h) for name, h in STATUS_HEADERS[status].items()}
    return response


def problems(
    *statuses: int, described: Mapping[int, str] | None = None
) -> dict[int | str, dict[str, Any]]:
    """FastAPI `responses=` for problem answers: `statuses` with default texts, `described` own."""
    texts: dict[int, str | None] = dict.fromkeys(statuses)
    texts.update(described or {})
    return {status: problem(status, text) for status, text in texts.items()}


def add_problems(operation: Doc, statuses: Iterable[int]) -> None:
    """Declare `statuses` on an operation of a document, keeping any it declares already."""
    responses = operation.setdefault("responses", {})
    for status in statuses:
        responses.setdefault(str(status), problem(status))


def _fix_errors(operation: Doc) -> None:
    """Every 4xx/5xx answer is problem+json: FastAPI's own 422 and bare declarations included."""
    for status, response in operation.get("responses", {}).items():
        if status[:1] not in ("4", "5"):
            continue
        declared = response.get("content", {})
        if PROBLEM_JSON not in declared or "application/json" in declared:
            response["content"] = problem(int(status))["content"]
        elif not declared[PROBLEM_JSON].get("schema"):
            declared[PROBLEM_JSON]["schema"] = {"$ref": PROBLEM_REF}
        for name, header in STATUS_HEADERS.get(int(status), {}).items():
            response.setdefault("headers", {}).setdefault(name, dict(header))


def with_problems(document: Doc) -> Doc:
    """The document with the Problem schema, every error as problem+json, service-wide answers."""
    for item in document.get("paths", {}).values():
        for operation in item.values():
            add_problems(operation, SERVICE_WIDE)
            if "requestBody" in operation:
                add_problems(operation, (413, 422))
            _fix_errors(operation)
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    schemas.update({name: dict(schema) for name, schema in SCHEMAS.items()})
    return document


def document_problems(app: FastAPI) -> None:
    """Make `app.openapi()` publish the problems the service really answers with."""
    generate: Callable[[], Doc] = app.openapi

    def openapi() -> Doc:
        if app.openapi_schema is None:
            app.openapi_schema = with_problems(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
