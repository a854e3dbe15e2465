"""contracts/problem.py: RFC 9457 bodies built from the error tree and from a plain status, and their OpenAPI."""

from __future__ import annotations

import json

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from contracts.errors import EdgeloopError, InputError, NotFoundError, SchemaError, ServiceUnavailableError
from contracts.problem import (
    PROBLEM_MEDIA_TYPE,
    Problem,
    error_response,
    problem_for,
    problem_response,
    problem_responses,
    problem_type,
)


@pytest.mark.parametrize(
    ("exc", "status", "title", "field"),
    [
        (NotFoundError("no prediction 'p-1': send an id a prediction returned"), 404, "Not found error", None),
        (SchemaError("feature 'age' must be a number", "age"), 422, "Schema error", "age"),
        (InputError("bad value: send a number"), 422, "Input error", None),
        (ServiceUnavailableError("broker unreachable: start it"), 503, "Service unavailable error", None),
        (EdgeloopError("unexpected: report it"), 500, "Edgeloop error", None),
    ],
)
def test_error_response_carries_the_class_status_message_and_field(
    exc: EdgeloopError, status: int, title: str, field: str | None
) -> None:
    response = error_response(exc)
    assert response.status_code == status
    assert response.headers["content-type"] == PROBLEM_MEDIA_TYPE
    body = json.loads(bytes(response.body))
    assert body == {
        "type": f"urn:edgeloop:error:{type(exc).__name__}",
        "title": title,
        "status": status,
        "detail": exc.message,
        "field": field,
    }
    assert Problem.model_validate(body) == problem_for(exc)


def test_problem_type_is_stable_per_class_and_titles_keep_acronyms() -> None:
    class HTTPTimeout(ServiceUnavailableError):
        pass

    assert problem_type(NotFoundError) == "urn:edgeloop:error:NotFoundError"
    assert problem_for(HTTPTimeout("slow: retry")).title == "HTTP timeout"


def test_problem_response_for_a_plain_status_uses_about_blank_and_the_phrase() -> None:
    response = problem_response(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
    assert response.headers["content-type"] == PROBLEM_MEDIA_TYPE
    assert json.loads(bytes(response.body)) == {
        "type": "about:blank",
        "title": "Unauthorized",
        "status": 401,
        "detail": "missing bearer token",
        "field": None,
    }
    assert json.loads(bytes(problem_response(422, "x", field="age").body))["field"] == "age"
    assert json.loads(bytes(problem_response(599, "odd").body))["title"] == "Error"


def test_problem_responses_document_problem_json_in_a_real_fastapi_app() -> None:
    app = FastAPI()

    @app.get("/things/{thing}", responses=problem_responses({404: "unknown thing", 422: "bad thing id"}))
    def thing(thing: str) -> dict[str, str]:
        if thing != "known":
            raise NotFoundError(f"no thing '{thing}': list them with GET /things")
        return {"thing": thing}

    @app.exception_handler(EdgeloopError)
    async def handler(request: object, exc: EdgeloopError) -> object:
        return error_response(exc)

    client = TestClient(app)
    missing = client.get("/things/nope")
    assert missing.status_code == 404 and missing.headers["content-type"] == PROBLEM_MEDIA_TYPE
    assert Problem.model_validate(missing.json()).detail.startswith("no thing 'nope'")
    spec = client.get("/openapi.json").json()["paths"]["/things/{thing}"]["get"]["responses"]
    for status, text in (("404", "unknown thing"), ("422", "bad thing id")):
        assert spec[status]["description"] == text
        schema = spec[status]["content"][PROBLEM_MEDIA_TYPE]["schema"]
        assert schema["required"] == ["title", "status", "detail"]
        assert set(schema["properties"]) == {"type", "title", "status", "detail", "field"}
