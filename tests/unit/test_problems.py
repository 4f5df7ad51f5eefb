"""Every error a FastAPI service raises answers as RFC 9457 problem+json."""

import orjson
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel, ConfigDict

from common.problems import ProblemError, install_problem_handlers, problem_body, problem_response


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")
    title: str


def _app() -> FastAPI:
    app = FastAPI()
    install_problem_handlers(app)

    @app.post("/things")
    async def create(body: Body) -> dict[str, str]:
        return {"title": body.title}

    @app.get("/conflict")
    async def conflict() -> None:
        raise ProblemError(409, "already there", headers={"X-Why": "dup"})

    return app


def test_validation_error_names_the_field() -> None:
    response = TestClient(_app()).post("/things", json={"title": "x", "owner": "mallory"})
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == 422
    assert "owner" in body["detail"]


def test_malformed_json_is_a_problem() -> None:
    response = TestClient(_app()).post(
        "/things", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"


def test_raised_problem_keeps_status_and_headers() -> None:
    response = TestClient(_app()).get("/conflict")
    assert response.status_code == 409
    assert response.headers["x-why"] == "dup"
    assert response.json()["detail"] == "already there"


def test_unknown_route_is_a_problem() -> None:
    response = TestClient(_app()).get("/nope")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"


def test_one_document_for_responses_and_raw_replies() -> None:
    raw = problem_body(404, "no such route", instance="/api/x")
    assert orjson.loads(raw) == {
        "type": "about:blank",
        "title": "Not Found",
        "status": 404,
        "detail": "no such route",
        "instance": "/api/x",
    }
    response = problem_response(404, "no such route", instance="/api/x")
    assert response.body == raw
    assert response.headers["content-type"] == "application/problem+json"
