"""The published contract and the code agree: schemas accept what the code accepts, errors are
problem+json, the gateway adds security and its own answers, 405 names every method.

Each body below was a schemathesis finding: the schema and the code disagreed on it.
"""

from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from jsonschema import Draft202012Validator
from pydantic import BaseModel, ValidationError

from common.openapi import PROBLEM_REF
from common.problems import PROBLEM_JSON, install_problem_handlers
from common.task_models import TaskCreate, TaskPatch
from gateway.docs import merge
from services.auth.schemas import MePatch, RegisterIn, ResetIn
from services.notifier.domain import Preferences
from services.tasks.api import router as tasks_router
from services.tasks.domain import ListQuery

CASES: list[tuple[type[BaseModel], dict[str, Any], bool]] = [
    (TaskCreate, {"title": "t", "due_at": "2030-01-01T00:00:00Z"}, True),
    (TaskCreate, {"title": "t", "due_at": 0}, False),  # was taken as 1970-01-01
    (TaskCreate, {"title": "t", "due_at": "0.5"}, False),  # a numeric string, likewise
    (TaskCreate, {"title": "\u00a0"}, False),  # trimmed to nothing; the schema allowed it
    (TaskCreate, {"title": "t", "tags": [" "]}, False),
    (TaskPatch, {"priority": None}, False),  # the schema said nullable, the code refused it
    (TaskPatch, {"due_at": None}, True),
    (TaskPatch, {"title": "new"}, True),
    (MePatch, {"name": "n"}, True),
    (MePatch, {"new_password": "a long new one", "current_password": None}, False),
    (MePatch, {"new_password": "a long new one"}, False),
    (MePatch, {"new_password": "a long new one", "current_password": "old one"}, True),
    (MePatch, {"name": None, "new_password": "a long new one", "current_password": "x"}, False),
    (MePatch, {}, False),
    (Preferences, {"reminders": False}, True),
    (Preferences, {"reminders": 0}, False),  # was taken as false
    (ResetIn, {"email": "someone@example.com"}, True),
    (ResetIn, {"email": "someone@mail.test"}, False),  # special-use: the schema allowed it
    (RegisterIn, {"email": "a@example.com", "password": "long enough", "name": "  "}, False),
    (ListQuery, {"cursor": ""}, True),  # the first page
    (ListQuery, {"due_before": "0.5"}, False),
]


def _accepted(model: type[BaseModel], body: dict[str, Any]) -> bool:
    try:
        model.model_validate(body)
    except ValidationError:
        return False
    return True


@pytest.mark.parametrize(("model", "body", "valid"), CASES)
def test_schema_and_code_agree(model: type[BaseModel], body: dict[str, Any], valid: bool) -> None:
    schema = model.model_json_schema()
    validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    assert _accepted(model, body) is valid
    assert validator.is_valid(body) is valid, list(validator.iter_errors(body))


def _tasks_app() -> FastAPI:
    app = FastAPI()
    install_problem_handlers(app)
    app.include_router(tasks_router)
    return app


async def test_405_names_every_method_of_the_path_and_ids_are_routed_by_form() -> None:
    transport = httpx.ASGITransport(app=_tasks_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        options = await client.options("/api/tasks")
        # No token needed to learn either: routing answers before any dependency runs.
        stats = await client.patch("/api/tasks/stats", json={"title": "x"})
        malformed = await client.get("/api/tasks/not-a-task-id")
    assert options.status_code == 405
    assert options.headers["allow"] == "GET, POST"  # Starlette named only the first route
    assert options.headers["content-type"] == PROBLEM_JSON
    assert stats.status_code == 405  # was 422: "stats" was read as a task id
    assert stats.headers["allow"] == "GET"
    assert malformed.status_code == 404


def test_service_document_declares_problems_not_fastapis_validation_error() -> None:
    document = _tasks_app().openapi()
    create = document["paths"]["/api/tasks"]["post"]
    for status in ("401", "409", "413", "422", "503"):
        content = create["responses"][status]["content"]
        assert content == {PROBLEM_JSON: {"schema": {"$ref": PROBLEM_REF}}}, status
    assert create["responses"]["503"]["headers"]["Retry-After"]["required"] is True
    assert "HTTPValidationError" not in document["components"]["schemas"]
    assert {"Problem", "FieldError"} <= document["components"]["schemas"].keys()
    created = create["responses"]["201"]
    assert created["headers"]["ETag"]["required"] is True
    assert created["links"]["UpdateTask"]["operationId"] == "update_task"
    assert "/api/tasks/{task_id}" in document["paths"]  # the convertor is not in the path
    assert all(p["name"] != "authorization" for p in create.get("parameters", []))


def test_gateway_adds_security_and_its_own_answers() -> None:
    service = _tasks_app().openapi()
    auth = {
        "paths": {
            "/api/auth/login": {"post": {"requestBody": {}, "responses": {"200": {}}}},
            "/api/auth/logout": {"post": {"security": [{"HTTPBearer": []}], "responses": {}}},
        },
        "components": {"securitySchemes": {"HTTPBearer": {"type": "http", "scheme": "bearer"}}},
    }
    merged = merge({"auth": auth, "tasks": service, "notifier": None})
    login = merged["paths"]["/api/auth/login"]["post"]
    assert login["security"] == []
    assert {"400", "413", "429", "431", "502", "503", "504"} <= login["responses"].keys()
    assert "401" not in login["responses"]
    assert merged["paths"]["/api/auth/logout"]["post"]["security"] == [{}, {"bearer": []}]
    stats = merged["paths"]["/api/tasks/stats"]["get"]
    assert stats["security"] == [{"bearer": []}]
    assert stats["responses"]["401"]["headers"]["WWW-Authenticate"]["required"] is True
    assert stats["responses"]["200"]["headers"]["X-Cache"]["required"] is True
    assert merged["components"]["securitySchemes"].keys() == {"bearer"}
    assert "/metrics" not in merged["paths"]  # served on its own listener only
    assert merged["paths"]["/livez"]["get"]["security"] == []
    assert "429" not in merged["paths"]["/livez"]["get"]["responses"]  # never limited
