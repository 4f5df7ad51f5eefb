"""HTTP routes of the tasks service; domain errors become problem+json here and only here."""

import re
from dataclasses import dataclass
from typing import Annotated, Any

import orjson
import structlog
from fastapi import APIRouter, Depends, FastAPI, Header, Path, Query, Request
from starlette.convertors import Convertor, register_url_convertor
from starlette.responses import Response

from common.openapi import AUTHENTICATED, operation_id, problems
from common.problems import ProblemError, problem_response
from common.task_models import TaskCreate, TaskPatch
from common.tokens import Revocations, TokenVerifier, verify_bearer
from services.tasks.domain import (
    BacklogFullError,
    BusyError,
    IdempotencyMismatchError,
    IdempotentTaskGoneError,
    InvalidCursorError,
    ListQuery,
    PreconditionFailedError,
    Task,
    TaskError,
    TaskNotFoundError,
    TaskPage,
    TaskStats,
    decode_cursor,
    encode_cursor,
    etag,
    if_none_match_hit,
)
from services.tasks.quota import TaskQuotaExceededError
from services.tasks.service import TaskService

log = structlog.get_logger(__name__)
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,200}")
# The OpenAPI schemas of the headers and ids the routes check by hand (400 or 404 past them).
IDEMPOTENCY_KEY_SCHEMA = {"pattern": "^[!-~]{1,200}$", "minLength": 1, "maxLength": 200}
TASK_ID_SCHEMA = {"pattern": "^[0-9a-f]{24}$"}
ETAG_HEADER = {"required": True, "schema": {"type": "string", "pattern": '^"[0-9]+"$'}}
_TASK_HEADERS = {"ETag": ETAG_HEADER, "Cache-Control": {"schema": {"type": "string"}}}
_LOCATION = {"required": True, "schema": {"type": "string"}}
# The stateful contract test follows these from a created task to its other operations.
_TASK_LINKS = {
    verb: {"operationId": op, "parameters": {"task_id": "$response.body#/id"}}
    for verb, op in (("GetTask", "get_task"), ("DeleteTask", "delete_task"))
} | {
    "UpdateTask": {
        "operationId": "update_task",
        "parameters": {"task_id": "$response.body#/id", "header.If-Match": "$response.header.ETag"},
    }
}
_ON_TASK = problems(
    *AUTHENTICATED,
    described={404: "no such task (also: another user's, or a malformed id)"},
)
_PRECONDITION = {412: "the task changed since the version in If-Match"}

_ERRORS: dict[type[TaskError], tuple[int, str]] = {
    TaskNotFoundError: (404, "no such task"),
    PreconditionFailedError: (412, "the task changed since the version in If-Match"),
    InvalidCursorError: (400, "invalid cursor"),
    IdempotencyMismatchError: (422, "Idempotency-Key was already used for another request"),
    IdempotentTaskGoneError: (409, "the task this Idempotency-Key created has been deleted"),
    BusyError: (503, "the task is busy; retry shortly"),
    BacklogFullError: (503, "too many events wait to be published; retry shortly"),
    TaskQuotaExceededError: (409, "task limit reached: delete tasks to make room"),
}
QUOTA_PROBLEM = "https://taskbus.dev/problems/task-quota-exceeded"
_TYPES: dict[type[Exception], str] = {TaskQuotaExceededError: QUOTA_PROBLEM}


@dataclass
class Deps:
    """What the routes need, made by the lifespan."""

    tasks: TaskService
    verifier: TokenVerifier
    revocations: Revocations
    cursor_secret: bytes


def deps(request: Request) -> Deps:
    """The lifespan's dependencies."""
    found: Deps = request.app.state.deps
    return found


DepsDep = Annotated[Deps, Depends(deps)]


async def caller(request: Request, d: DepsDep) -> str:
    """The verified, unrevoked token's subject; one uniform 401 whatever is wrong with it."""
    # Read from the request, not declared as a parameter: the contract states it as security.
    authorization = request.headers.get("authorization")
    return (await verify_bearer(d.verifier, d.revocations, authorization)).sub


Owner = Annotated[str, Depends(caller)]
TaskId = Annotated[str, Path(json_schema_extra=TASK_ID_SCHEMA)]


class TaskIdConvertor(Convertor[str]):
    """A task id in a path: 24 hex digits, so /api/tasks/stats is no task's path (PATCH there is
    405, not a body validation) and a malformed id matches no route (404 like an unknown one)."""

    regex = "[0-9a-f]{24}"

    def convert(self, value: str) -> str:
        """The id as the route receives it."""
        return value

    def to_string(self, value: str) -> str:
        """The id as it appears in a path."""
        return value


register_url_convertor("task_id", TaskIdConvertor())


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers=headers, media_type="application/json")


def _task_response(
    task: Task, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    all_headers = {"ETag": etag(task.version), "Cache-Control": "private, no-cache"}
    return _json(task.model_dump(mode="json"), status, all_headers | (headers or {}))


router = APIRouter(prefix="/api/tasks", tags=["tasks"], generate_unique_id_function=operation_id)


@router.post(
    "",
    status_code=201,
    response_model=Task,
    responses={
        201: {
            "headers": {
                **_TASK_HEADERS,
                "Location": {"required": True, "schema": {"type": "string"}},
            },
            "links": _TASK_LINKS,
        },
        **problems(
            *AUTHENTICATED,
            described={
                400: "Idempotency-Key is not 1..200 visible ASCII characters",
                409: f"the caller stores its maximum of tasks (type {QUOTA_PROBLEM}), or "
                "the task an Idempotency-Key created has been deleted",
                422: "invalid input, or an Idempotency-Key reused for another request",
            },
        ),
    },
)
async def create_task(
    body: TaskCreate,
    owner: Owner,
    d: DepsDep,
    idempotency_key: Annotated[str | None, Header(json_schema_extra=IDEMPOTENCY_KEY_SCHEMA)] = None,
) -> Response:
    """Create a task; a retry with the same Idempotency-Key returns the first result."""
    if idempotency_key is not None and not _IDEMPOTENCY_KEY.fullmatch(idempotency_key):
        raise ProblemError(400, "Idempotency-Key must be 1..200 visible ASCII characters")
    stored, replayed = await d.tasks.create(owner, body, idempotency_key)
    headers = {"Location": f"/api/tasks/{stored.id}"}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return _task_response(stored, 201, headers)


@router.get(
    "",
    response_model=TaskPage,
    responses=problems(
        *AUTHENTICATED, described={400: "the cursor was not issued for this query (or is garbled)"}
    ),
)
async def list_tasks(query: Annotated[ListQuery, Query()], owner: Owner, d: DepsDep) -> Response:
    """The caller's tasks, filtered, sorted, one page at a time (opaque cursor)."""
    after = decode_cursor(d.cursor_secret, query, query.cursor) if query.cursor else None
    items, position = await d.tasks.page(owner, query, after)
    cursor = encode_cursor(d.cursor_secret, query, position) if position else None
    body = {"items": [t.model_dump(mode="json") for t in items], "next_cursor": cursor}
    return _json(body, headers={"Cache-Control": "private, no-cache"})


@router.get(
    "/stats",
    response_model=TaskStats,
    responses=problems(*AUTHENTICATED),
)
async def task_stats(owner: Owner, d: DepsDep) -> Response:
    """Counts of the caller's tasks by status and by priority."""
    stats = await d.tasks.stats(owner)
    return _json(stats.model_dump(mode="json"), headers={"Cache-Control": "private, no-cache"})


@router.get(
    "/{task_id:task_id}",
    response_model=Task,
    responses={
        200: {"headers": _TASK_HEADERS},
        304: {"description": "If-None-Match names the current version", "headers": _TASK_HEADERS},
        **_ON_TASK,
    },
)
async def get_task(
    task_id: TaskId,
    owner: Owner,
    d: DepsDep,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """One task; 304 when If-None-Match names its current version."""
    task = await d.tasks.get(owner, task_id)
    if if_none_match_hit(if_none_match, task.version):
        return Response(
            status_code=304,
            headers={"ETag": etag(task.version), "Cache-Control": "private, no-cache"},
        )
    return _task_response(task)


@router.patch(
    "/{task_id:task_id}",
    response_model=Task,
    responses={200: {"headers": _TASK_HEADERS}, **_ON_TASK, **problems(described=_PRECONDITION)},
)
async def update_task(
    task_id: TaskId,
    body: TaskPatch,
    owner: Owner,
    d: DepsDep,
    if_match: Annotated[str | None, Header()] = None,
) -> Response:
    """Change some fields; 412 when If-Match names a stale version."""
    task = await d.tasks.update(owner, task_id, body, if_match)
    return _task_response(task)


@router.delete(
    "/{task_id:task_id}",
    status_code=204,
    responses={**_ON_TASK, **problems(described=_PRECONDITION)},
)
async def delete_task(
    task_id: TaskId,
    owner: Owner,
    d: DepsDep,
    if_match: Annotated[str | None, Header()] = None,
) -> Response:
    """Delete a task; 412 when If-Match names a stale version."""
    await d.tasks.delete(owner, task_id, if_match)
    return Response(status_code=204)


def install_task_error_handlers(app: FastAPI) -> None:
    """Map each domain error to its HTTP status."""

    async def on_task_error(request: Request, exc: Exception) -> Response:
        status, detail = _ERRORS[type(exc)] if isinstance(exc, TaskError) else (500, "error")
        if status >= 500:
            log.warning("answering with an error", status=status, error=str(exc))
        headers = {"Retry-After": "1"} if status == 503 else None
        return problem_response(
            status,
            detail,
            type_=_TYPES.get(type(exc), "about:blank"),
            instance=request.url.path,
            headers=headers,
        )

    for error in _ERRORS:
        app.add_exception_handler(error, on_task_error)
