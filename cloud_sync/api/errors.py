"""Every error of the cloud API answers one body: an RFC 9457 problem (`application/problem+json`,
contracts/problem.py) with `type`, `title`, `status`, `detail` and `field` where it applies.

An `EdgeloopError` (contracts/errors.py: 401/403 auth, 404, 409, 413, 422, 503 ...) carries its status; an
unknown route or a wrong method (404/405), FastAPI's request validation (422, `field` names the input) and an
unexpected exception (500) are answered in the same shape. `BodyLimit` refuses a body over max_body_bytes
(413) before it is all read. Clients that read `detail` (the CLI, the dashboard) keep working.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from contracts.errors import EdgeloopError, PayloadTooLarge, Unauthorized
from contracts.logs import log_event
from contracts.problem import error_response, problem_response, problem_responses

__all__ = ["ERRORS", "BodyLimit", "install_error_handlers"]

logger = logging.getLogger("edgeloop.cloud.api")

ERRORS = problem_responses(
    {
        401: "missing or unknown bearer token",
        403: "a viewer token on an operator route",
        404: "unknown device, rollout, alert, bundle or route",
        413: "request body over max_body_bytes",
        422: "a parameter or body field is missing or invalid (`field` names it), or the request breaks a rule",
    }
)
"""The problem responses every route of the cloud documents in OpenAPI."""


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error of `app` with a problem body."""
    app.add_exception_handler(EdgeloopError, _edgeloop_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected_error)


async def _edgeloop_error(_request: Request, exc: EdgeloopError) -> Response:
    headers = {"WWW-Authenticate": "Bearer"} if exc.http_status == 401 and isinstance(exc, Unauthorized) else None
    return error_response(exc, headers)


async def _http_error(_request: Request, exc: StarletteHTTPException) -> Response:
    if isinstance(exc, _TooLarge):
        return error_response(exc.error)
    return problem_response(exc.status_code, str(exc.detail), headers=exc.headers)


async def _validation_error(_request: Request, exc: RequestValidationError) -> Response:
    first = exc.errors()[0] if exc.errors() else {}
    where = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path", "header")]
    field = ".".join(where) or None
    return problem_response(422, f"{field or 'request'}: {first.get('msg', 'invalid')}", field=field)


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    log_event(logger, "request failed", level=logging.ERROR, path=request.url.path, error=repr(exc))
    return problem_response(500, f"{type(exc).__name__}: {exc}")


class _TooLarge(StarletteHTTPException):
    """Raised while a body is read: an HTTPException, so FastAPI's body parsing lets it through (it turns any
    other exception into a 400); answered as the `PayloadTooLarge` it carries."""

    def __init__(self, error: PayloadTooLarge) -> None:
        super().__init__(413, error.message)
        self.error = error


class BodyLimit:
    """ASGI middleware: 413 for a Content-Length over `limit`, and for a chunked body once it passes it."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and not length.isdigit():
            await _refuse(scope, receive, send, problem_response(400, "bad Content-Length header"))
            return
        if length is not None and int(length) > self.limit:
            await _refuse(scope, receive, send, error_response(self._too_large()))
            return
        seen = 0
        started = False

        async def limited_receive() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge(self._too_large())
            return message

        async def tracking_send(message: Any) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge as exc:
            if started:
                raise
            await _refuse(scope, receive, send, error_response(exc.error))

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"request body is over the limit of {self.limit} bytes (max_body_bytes)")


async def _refuse(scope: Any, receive: Any, send: Any, response: Response) -> None:
    response.headers["connection"] = "close"
    await response(scope, receive, send)
