"""HTTP routes of the tasks service; domain errors become problem+json here and only here."""

import re
from dataclasses import dataclass
from typing import Annotated, Any

import orjson
import structlog
from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request
from starlette.responses import Response

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
_ID = re.compile(r"[0-9a-f]{24}")
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,200}")

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


async def caller(d: DepsDep, authorization: Annotated[str | None, Header()] = None) -> str:
    """The verified, unrevoked token's subject; one uniform 401 whatever is wrong with it."""
    return (await verify_bearer(d.verifier, d.revocations, authorization)).sub


Owner = Annotated[str, Depends(caller)]


def _task_id(task_id: str) -> str:
    if not _ID.fullmatch(task_id):
        raise TaskNotFoundError(task_id)  # malformed ids do not exist either
    return task_id


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers=headers, media_type="application/json")


def _task_response(
    task: Task, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    all_headers = {"ETag": etag(task.version), "Cache-Control": "private, no-cache"}
    return _json(task.model_dump(mode="json"), status, all_headers | (headers or {}))


router = APIRouter(prefix="/api/tasks", tags=["tasks"])


@router.post(
    "",
    status_code=201,
    response_model=Task,
    responses={
        409: {
            "description": f"the caller stores its maximum of tasks (type {QUOTA_PROBLEM}), or "
            "the task an Idempotency-Key created has been deleted",
            "content": {"application/problem+json": {}},
        }
    },
)
async def create_task(
    body: TaskCreate,
    owner: Owner,
    d: DepsDep,
    idempotency_key: Annotated[str | None, Header()] = None,
) -> Response:
    """Create a task; a retry with the same Idempotency-Key returns the first result."""
    if idempotency_key is not None and not _IDEMPOTENCY_KEY.fullmatch(idempotency_key):
        raise ProblemError(400, "Idempotency-Key must be 1..200 visible ASCII characters")
    stored, replayed = await d.tasks.create(owner, body, idempotency_key)
    headers = {"Location": f"/api/tasks/{stored.id}"}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return _task_response(stored, 201, headers)


@router.get("", response_model=TaskPage)
async def list_tasks(query: Annotated[ListQuery, Query()], owner: Owner, d: DepsDep) -> Response:
    """The caller's tasks, filtered, sorted, one page at a time (opaque cursor)."""
    after = decode_cursor(d.cursor_secret, query, query.cursor) if query.cursor else None
    items, position = await d.tasks.page(owner, query, after)
    cursor = encode_cursor(d.cursor_secret, query, position) if position else None
    body = {"items": [t.model_dump(mode="json") for t in items], "next_cursor": cursor}
    return _json(body, headers={"Cache-Control": "private, no-cache"})


@router.get("/stats", response_model=TaskStats)
async def task_stats(owner: Owner, d: DepsDep) -> Response:
    """Counts of the caller's tasks by status and by priority."""
    stats = await d.tasks.stats(owner)
    return _json(stats.model_dump(mode="json"), headers={"Cache-Control": "private, no-cache"})


@router.get("/{task_id}", response_model=Task)
async def get_task(
    task_id: str,
    owner: Owner,
    d: DepsDep,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """One task; 304 when If-None-Match names its current version."""
    task = await d.tasks.get(owner, _task_id(task_id))
    if if_none_match_hit(if_none_match, task.version):
        return Response(
            status_code=304,
            headers={"ETag": etag(task.version), "Cache-Control": "private, no-cache"},
        )
    return _task_response(task)


@router.patch("/{task_id}", response_model=Task)
async def update_task(
    task_id: str,
    body: TaskPatch,
    owner: Owner,
    d: DepsDep,
    if_match: Annotated[str | None, Header()] = None,
) -> Response:
    """Change some fields; 412 when If-Match names a stale version."""
    task = await d.tasks.update(owner, _task_id(task_id), body, if_match)
    return _task_response(task)


@router.delete("/{task_id}", status_code=204)
async def delete_task(
    task_id: str,
    owner: Owner,
    d: DepsDep,
    if_match: Annotated[str | None, Header()] = None,
) -> Response:
    """Delete a task; 412 when If-Match names a stale version."""
    await d.tasks.delete(owner, _task_id(task_id), if_match)
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
