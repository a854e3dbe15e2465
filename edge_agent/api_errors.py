"""The agent's error handlers: every error of its REST API answers an RFC 9457 problem (contracts/problem.py,
`application/problem+json`), the same body as the cloud's API.

An `EdgeloopError` carries its status (401 adds `WWW-Authenticate: Bearer`); an unknown route or a wrong method
(404/405), FastAPI's request validation (422, `field` names the input) and an unexpected exception (500, logged)
are answered in the same shape. Errors on /v1/predict are counted in `edgeloop_prediction_errors_total{kind}` and,
except a refused token, in the telemetry window.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from contracts.errors import EdgeloopError, Unauthorized
from contracts.logs import log_event
from contracts.problem import error_response, problem_response
from edge_agent.metrics import AgentMetrics
from edge_agent.protocol_support import count_prediction_error
from edge_agent.service import InferenceService

__all__ = ["install_error_handlers"]

logger = logging.getLogger("edgeloop.agent.api")
_COUNTED = "/v1/predict"


def install_error_handlers(app: FastAPI, metrics: AgentMetrics, service: InferenceService) -> None:
    """Answer every error of `app` with a problem body (see the module doc)."""

    @app.exception_handler(EdgeloopError)
    async def edgeloop_error(request: Request, exc: EdgeloopError) -> Response:
        if request.scope["path"] == _COUNTED:
            count_prediction_error(metrics, service, exc)
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
        return error_response(exc, headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        """Unknown route (404), wrong method (405)."""
        return problem_response(exc.status_code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        where = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path", "header")]
        field = ".".join(where) or None
        return problem_response(422, f"{field or 'request'}: {first.get('msg', 'invalid')}", field=field)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> Response:
        log_event(logger, "request failed", level=logging.ERROR, path=request.url.path, error=repr(exc))
        if request.scope["path"] == _COUNTED:
            count_prediction_error(metrics, service, exc)
        return problem_response(500, f"{type(exc).__name__}: {exc}")
