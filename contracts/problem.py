"""RFC 9457 problem details: the one error body both REST APIs (agent and cloud) answer with.

    HTTP/1.1 404 Not Found
    Content-Type: application/problem+json

    {"type": "urn:edgeloop:error:NotFoundError", "title": "Not found error", "status": 404,
     "detail": "no prediction 'p-1' on this device: ...", "field": null}

`type` names the error class of contracts/errors.py's tree (a stable URN, so a client can match on it)
or is "about:blank" for a plain HTTP status (unknown route, unexpected 500); `title` is constant per
type; `detail` is the one-line message that says what to do; `field` names the offending input field
where one applies (schema errors), else null. Build a response with `error_response(exc)` or
`problem_response(status, detail)`; document one with `problem_responses({404: "..."})`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from contracts.errors import EdgeloopError

__all__ = [
    "PROBLEM_MEDIA_TYPE",
    "Problem",
    "error_response",
    "problem_for",
    "problem_response",
    "problem_responses",
    "problem_schema",
    "problem_type",
]

PROBLEM_MEDIA_TYPE = "application/problem+json"
_TYPE_PREFIX = "urn:edgeloop:error:"
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z][a-z]*|[a-z]+|\d+")


class Problem(BaseModel):
    """An RFC 9457 problem details object with edgeloop's `field` extension."""

    model_config = ConfigDict(frozen=True, title="Problem")

    type: str = Field(
        default="about:blank",
        description="The error class as a stable URN (urn:edgeloop:error:<Class>), or about:blank for a plain status.",
    )
    title: str = Field(description="Short summary, the same for every problem of this type.")
    status: int = Field(ge=100, le=599, description="The HTTP status code of this response.")
    detail: str = Field(description="What went wrong in this request and what to do about it (one line).")
    field: str | None = Field(default=None, description="The input field at fault, where one applies.")


def problem_type(error: type[EdgeloopError]) -> str:
    """The stable `type` URN of an error class: urn:edgeloop:error:NotFoundError."""
    return _TYPE_PREFIX + error.__name__


def _title(error: type[EdgeloopError]) -> str:
    words = _WORD.findall(error.__name__)
    return " ".join([words[0], *(w if w.isupper() and len(w) > 1 else w.lower() for w in words[1:])])


def problem_for(exc: EdgeloopError) -> Problem:
    """The problem details of an edgeloop error: its class as `type`, its status, message and `field`."""
    field = getattr(exc, "field", None)
    return Problem(
        type=problem_type(type(exc)),
        title=_title(type(exc)),
        status=exc.http_status,
        detail=exc.message,
        field=field if isinstance(field, str) else None,
    )


def _response(problem: Problem, headers: Mapping[str, str] | None) -> Response:
    return Response(
        problem.model_dump_json().encode(), problem.status, dict(headers or {}), media_type=PROBLEM_MEDIA_TYPE
    )


def error_response(exc: EdgeloopError, headers: Mapping[str, str] | None = None) -> Response:
    """An application/problem+json response for an edgeloop error, with its class's HTTP status."""
    return _response(problem_for(exc), headers)


def problem_response(
    status: int, detail: str, *, field: str | None = None, headers: Mapping[str, str] | None = None
) -> Response:
    """An application/problem+json response for a plain HTTP status (type about:blank, the status phrase as title)."""
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    return _response(Problem(title=title, status=status, detail=detail, field=field), headers)


def problem_schema() -> dict[str, Any]:
    """The JSON Schema of a problem body (self-contained, for OpenAPI components or inline use)."""
    return Problem.model_json_schema(mode="serialization")


def problem_responses(descriptions: Mapping[int, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for FastAPI routes: each status answers application/problem+json with the Problem schema.

    `@router.get("/x", responses=problem_responses({404: "unknown id", 422: "bad field"}))`
    """
    content = {PROBLEM_MEDIA_TYPE: {"schema": problem_schema()}}
    return {status: {"description": text, "content": content} for status, text in descriptions.items()}
