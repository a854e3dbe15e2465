"""What the agent's other inference protocols (Open Inference Protocol V2 in protocol_v2.py, MLflow's scoring
protocol in protocol_mlflow.py) share with `POST /v1/predict`: the bearer-token check, the body size limit, the
one prediction path (the same `InferenceService.predict`, so the same schema checks, telemetry, drift windows,
A/B split, hybrid inference and prediction ids) and the error accounting.

An error answers an RFC 9457 problem, like every other agent route, with the member the protocol's own clients
read added beside it (`error` for V2 clients such as tritonclient, `error_code` and `message` for MLflow's).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import Request, Response
from starlette.concurrency import run_in_threadpool

from contracts.errors import EdgeloopError
from contracts.problem import PROBLEM_MEDIA_TYPE, problem_for
from edge_agent.coalesce import Coalescer
from edge_agent.errors import ModelNotReady, PayloadTooLarge, Unauthorized
from edge_agent.loaded import LoadedModel, PredictionBatch
from edge_agent.metrics import AgentMetrics, error_kind
from edge_agent.service import InferenceService

__all__ = [
    "ProtocolContext",
    "add_operations",
    "count_prediction_error",
    "json_response",
    "prediction_body",
    "read_body",
]

_INLINE_ROWS = 32  # as /v1/predict: bigger batches run in the thread pool so they do not stall the event loop


def json_response(content: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(orjson.dumps(content), status, dict(headers or {}), media_type="application/json")


def prediction_body(result: PredictionBatch, batch: bool) -> dict[str, Any]:
    """The `/v1/predict` answer (contracts.predictions): one record's fields, or `predictions` for a batch."""
    manifest = result.model.manifest
    if batch:
        return {"model": manifest.name, "model_version": manifest.version, "predictions": result.predictions}
    return {"model": manifest.name, "model_version": manifest.version, **result.predictions[0]}


def count_prediction_error(metrics: AgentMetrics, service: InferenceService, exc: Exception) -> None:
    """A failed prediction request: `edgeloop_prediction_errors_total{kind}` and, except a refused token, the
    telemetry window's errors (an exception outside the error tree counts as `internal`, on /metrics only)."""
    if not isinstance(exc, EdgeloopError):
        metrics.prediction_errors.labels("internal").inc()
        return
    metrics.prediction_errors.labels(error_kind(exc)).inc()
    if not isinstance(exc, Unauthorized):
        service.record_error(error_kind(exc))


@dataclass(frozen=True)
class ProtocolContext:
    """The agent's parts a protocol's routes use; built once by `api.create_app`."""

    service: InferenceService
    metrics: AgentMetrics
    check_auth: Callable[[Request], None]
    max_body_bytes: int
    max_batch: int
    coalescer: Coalescer | None = None
    """Concurrent small requests share one model call (edge_agent/coalesce.py), as on /v1/predict."""

    def served(self) -> LoadedModel:
        current = self.service.current
        if current is None:
            raise ModelNotReady("no model is loaded yet: install one with --bundle or publish a desired state")
        return current

    async def body(self, request: Request) -> bytes:
        """The request body, refused past max_body_bytes (413) before it is all read."""
        return await read_body(request, self.max_body_bytes)

    async def predict(self, records: Sequence[Mapping[str, Any]], request: Request) -> PredictionBatch:
        """The `/v1/predict` path: A/B key from X-Request-Key, big batches off the event loop, hybrid answers."""
        key = request.headers.get("x-request-key")
        if len(records) <= _INLINE_ROWS:
            if self.coalescer is not None and key is None:
                result = await self.coalescer.predict(records)
            else:
                result = self.service.predict(records, key)
        else:
            result = await run_in_threadpool(self.service.predict, records, key)
        if self.service.hybrid is not None:
            result = await self.service.resolve_hybrid(result, records)
        return result

    def error(self, exc: EdgeloopError, extra: Mapping[str, Any], *, prediction: bool) -> Response:
        """A problem+json answer with the protocol's own members; a failed prediction is counted as on /v1."""
        if prediction:
            count_prediction_error(self.metrics, self.service, exc)
        body = {**problem_for(exc).model_dump(), **extra}
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
        return Response(orjson.dumps(body), exc.http_status, headers, media_type=PROBLEM_MEDIA_TYPE)


def add_operations(app: Any, paths: Mapping[str, Mapping[str, Any]]) -> None:
    """Describe plain routes in the app's OpenAPI document (after `install_openapi`, which it wraps)."""
    previous = app.openapi

    def openapi() -> dict[str, Any]:
        schema: dict[str, Any] = previous()
        secured = "securitySchemes" in schema.get("components", {})
        for path, operations in paths.items():
            if path not in schema["paths"]:
                schema["paths"][path] = {
                    method: {**op, "security": [{"bearer": []}]} if secured and "401" in op["responses"] else op
                    for method, op in operations.items()
                }
        return schema

    app.openapi = openapi


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 past `limit` bytes (max_body_bytes) before it is all read."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise PayloadTooLarge(f"request body is {length} bytes, over the limit of {limit} (max_body_bytes)")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body is over the limit of {limit} bytes (max_body_bytes)")
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
