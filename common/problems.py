"""RFC 9457 problem details: the one error format of every Taskbus HTTP response."""

from collections.abc import Mapping
from typing import Any, cast

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match

PROBLEM_JSON = "application/problem+json"

_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    412: "Precondition Failed",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    428: "Precondition Required",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


class ProblemError(Exception):
    """Raise anywhere in an api.py to answer with a problem document."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        title: str | None = None,
        type_: str = "about:blank",
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.title = title
        self.type_ = type_
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})


def problem_body(
    status: int,
    detail: str,
    *,
    title: str | None = None,
    type_: str = "about:blank",
    instance: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> bytes:
    """The serialised RFC 9457 document (for code that sends its own response, as the gateway)."""
    body: dict[str, Any] = {
        "type": type_,
        "title": title or _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    body.update(extra or {})
    return orjson.dumps(body)


def problem_response(
    status: int,
    detail: str,
    *,
    title: str | None = None,
    type_: str = "about:blank",
    instance: str | None = None,
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Response:
    """Build an application/problem+json response."""
    body = problem_body(status, detail, title=title, type_=type_, instance=instance, extra=extra)
    return Response(body, status, headers=dict(headers or {}), media_type=PROBLEM_JSON)


def _field_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    return [
        {
            "loc": [str(part) for part in err.get("loc", ())],
            "msg": err.get("msg", ""),
            "type": err.get("type", ""),
        }
        for err in exc.errors()
    ]


_METHODS = ("DELETE", "GET", "HEAD", "PATCH", "POST", "PUT")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route of the app serves on this request's path (asked of the routes
    themselves: FastAPI wraps included routers in routes of its own)."""
    routes = request.app.router.routes
    return [
        method
        for method in _METHODS
        if any(r.matches({**request.scope, "method": method})[0] is Match.FULL for r in routes)
    ]


def install_problem_handlers(app: FastAPI) -> None:
    """Make every error FastAPI or the routes raise answer as problem+json, and say so in the
    app's OpenAPI document (common.openapi)."""
    # Imported here: common.openapi reads this module's PROBLEM_JSON.
    from common.openapi import document_problems  # noqa: PLC0415

    document_problems(app)

    async def on_problem(request: Request, exc: Exception) -> Response:
        exc = cast(ProblemError, exc)
        return problem_response(
            exc.status,
            exc.detail,
            title=exc.title,
            type_=exc.type_,
            instance=request.url.path,
            headers=exc.headers,
            extra=exc.extra,
        )

    async def on_validation(request: Request, exc: Exception) -> Response:
        exc = cast(RequestValidationError, exc)
        errors = _field_errors(exc)
        fields = ", ".join(".".join(e["loc"]) for e in errors) or "request"
        return problem_response(
            422, f"invalid input: {fields}", instance=request.url.path, extra={"errors": errors}
        )

    async def on_http(request: Request, exc: Exception) -> Response:
        exc = cast(StarletteHTTPException, exc)
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # Starlette names only the first route of the path; RFC 9110 wants all its methods.
            headers["Allow"] = ", ".join(allowed_methods(request))
        return problem_response(
            exc.status_code, str(exc.detail), instance=request.url.path, headers=headers
        )

    app.add_exception_handler(ProblemError, on_problem)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
