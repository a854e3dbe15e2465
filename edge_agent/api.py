"""The agent's local REST API (FastAPI): a thin transport over `InferenceService`.

    POST /v1/predict   one record {feature: value}, a list of records, or {"records": [...]}   (bearer token)
                       optional header X-Request-Key: the request's key for an A/B split
    POST /v1/feedback  {"prediction_id", "label"}, a list of them, or {"feedback": [...]}       (bearer token)
    POST /v1/explain   same body as /v1/predict (key fields too); the served model's answer plus
                       top-k feature contributions                                             (bearer token)
    GET  /v1/predictions/{id}/lineage   model version, run, data hash, code version of a prediction (bearer token)
    GET  /v1/model     summary of the model being served and of the device                    (bearer token)
    GET  /healthz      the process is alive                                                    (open)
    GET  /readyz       a model is loaded (503 otherwise)                                       (open)
    GET  /metrics      Prometheus text format                                                  (open)
    GET  /docs         OpenAPI docs, the request schema built from the current model            (open)

Health, readiness and metrics stay open so that orchestrators and scrapers need no secret; they reveal
no data beyond the model's name and version. The predict route decodes the body itself with orjson (a
pydantic body model would halve the throughput) and the schema check is `contracts.runtime.encode_records`;
the pydantic models in `openapi_schema` only describe the API in OpenAPI. Every EdgeloopError maps to its `http_status`
in one handler (edge_agent/api_errors.py), so bad input gets a 4xx naming the field and never a 5xx; every error
answers an RFC 9457 problem (`application/problem+json`, contracts/problem.py), unknown routes and 500s included.
"""

from __future__ import annotations

import hmac
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from contracts.docs_ui import install_docs
from contracts.errors import EdgeloopError, InputError, SchemaError, Unauthorized
from contracts.problem import problem_responses
from edge_agent.api_errors import install_error_handlers
from edge_agent.bundle_import import install_bundle_import
from edge_agent.coalesce import Coalescer
from edge_agent.errors import BatchTooLarge, MalformedBody, ModelNotReady
from edge_agent.explain import explain_records, parse_top_k
from edge_agent.loaded import PredictionBatch
from edge_agent.metrics import CONTENT_TYPE_LATEST, AgentMetrics
from edge_agent.openapi_schema import ERRORS, install_openapi
from edge_agent.protocol_mlflow import MLFLOW_OPERATIONS, install_mlflow
from edge_agent.protocol_support import ProtocolContext, add_operations, prediction_body, read_body
from edge_agent.protocol_v2 import V2_OPERATIONS, install_v2
from edge_agent.service import InferenceService
from edge_agent.settings import AgentSettings
from edge_agent.updater import AGENT_VERSION

__all__ = ["create_app", "parse_feedback", "parse_records"]

_ROUTES = {
    p: p
    for p in ("/v1/predict", "/v1/feedback", "/v1/model", "/healthz", "/readyz", "/metrics", "/docs", "/openapi.json")
}
_ROUTES["/v1/explain"] = "/v1/explain"
_ROUTES |= {p: p for p in ("/invocations", "/ping", "/v2/health/live", "/v2/health/ready")}


def _route_family(path: str) -> str:
    """The metrics label of a path with parameters: the V2 model routes by their last segment, else `other`."""
    if path.startswith("/v2/models/"):
        return "/v2/models/{name}/infer" if path.endswith("/infer") else "/v2/models/{name}"
    return "other"


_NAN_TOKEN = re.compile(rb"(?<![\"\w])-?(NaN|Infinity)(?![\"\w])")
_INLINE_ROWS = 32  # bigger batches run in the thread pool so they do not stall the event loop


def _json(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(content), status, headers, media_type="application/json")


class _MetricsMiddleware:
    """Times every HTTP request into http_request_duration_seconds{model,route} (pure ASGI, no body copy)."""

    def __init__(self, app: ASGIApp, metrics: AgentMetrics, service: InferenceService) -> None:
        self.app, self.metrics, self.service = app, metrics, service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            current = self.service.current
            model = current.manifest.name if current else ""
            route = _ROUTES.get(scope["path"]) or _route_family(scope["path"])
            self.metrics.observe_request(model, route, status, time.perf_counter() - start)


def parse_records(body: bytes, feature_names: frozenset[str] | set[str], max_batch: int) -> tuple[list[Any], bool]:
    """Body -> (records, is_batch). Raises MalformedBody (400), InputError (422) or BatchTooLarge (413)."""
    if not body.strip():
        raise MalformedBody('request body is empty: send a JSON record, a list of records or {"records": [...]}')
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if _NAN_TOKEN.search(body):
            raise MalformedBody("NaN and Infinity are not valid JSON: send null for a missing value") from None
        raise MalformedBody(f"request body is not valid JSON: {exc}") from None
    if isinstance(data, dict) and "records" in data and "records" not in feature_names:
        extra = sorted(set(data) - {"records"})
        if extra:
            raise SchemaError(f"unknown field '{extra[0]}' next to 'records'", extra[0])
        data = data["records"]
        if not isinstance(data, list):
            raise SchemaError("field 'records' must be a list of records", "records")
    if isinstance(data, dict):
        return [data], False
    if not isinstance(data, list):
        raise InputError('request body must be a JSON object (one record), a list of records or {"records": [...]}')
    if not data:
        raise SchemaError("the batch ('records') is empty: send at least one record", "records")
    if len(data) > max_batch:
        raise BatchTooLarge(f"batch of {len(data)} records is over the limit of {max_batch} (max_batch)")
    return data, True


def parse_feedback(body: bytes, max_batch: int) -> tuple[list[tuple[str, Any]], bool]:
    """Body -> ([(prediction_id, label)], is_batch); one-line 4xx errors naming the field."""
    try:
        data = orjson.loads(body) if body.strip() else None
    except orjson.JSONDecodeError as exc:
        raise MalformedBody(f"request body is not valid JSON: {exc}") from None
    if data is None:
        raise MalformedBody('send {"prediction_id": "...", "label": ...}, a list of them or {"feedback": [...]}')
    batch = not isinstance(data, dict) or "feedback" in data
    if isinstance(data, dict) and "feedback" in data:
        data = data["feedback"]
    items = data if isinstance(data, list) else [data]
    if not items:
        raise SchemaError("the feedback batch is empty", "feedback")
    if len(items) > max_batch:
        raise BatchTooLarge(f"feedback batch of {len(items)} is over the limit of {max_batch} (max_batch)")
    parsed = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise SchemaError(f"feedback {index} must be an object with 'prediction_id' and 'label'", "feedback")
        unknown = sorted(set(item) - {"prediction_id", "label"})
        if unknown:
            raise SchemaError(f"feedback {index}: unknown field '{unknown[0]}'", unknown[0])
        prediction_id, label = item.get("prediction_id"), item.get("label")
        if not isinstance(prediction_id, str) or not prediction_id:
            raise SchemaError(
                f"feedback {index}: 'prediction_id' must be the id a prediction returned", "prediction_id"
            )
        if label is None or isinstance(label, bool) or not isinstance(label, int | str):
            raise SchemaError(f"feedback {index}: 'label' must be one of the model's classes", "label")
        parsed.append((prediction_id, label))
    return parsed, batch


def create_app(
    service: InferenceService,
    settings: AgentSettings,
    metrics: AgentMetrics,
    status: Callable[[], dict[str, Any]] = dict,
    lifespan: Any = None,
    *,
    install_bundle: Callable[[Path], Any] | None = None,
) -> FastAPI:
    """The REST app; `status()` adds device facts (id, group, broker, stored versions) to /v1/model;
    `install_bundle` (the updater's `install_local`) enables POST /v1/bundles (edge_agent/bundle_import.py)."""
    app = FastAPI(
        title="edgeloop agent",
        summary="Local inference on a verified ONNX bundle.",
        version="v1",
        lifespan=lifespan,
        # FastAPI's native OpenTelemetry hooks cost ~10% per request; the agent has its own metrics.
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
        docs_url=None,  # /docs is contracts/docs_ui.py: Swagger UI from our own files, not a CDN (offline devices)
        redoc_url=None,
    )
    app.add_middleware(_MetricsMiddleware, metrics=metrics, service=service)
    token = settings.token.encode() if settings.token else None
    max_body, max_batch = settings.max_body_bytes, settings.max_batch

    def check_auth(request: Request) -> None:
        if token is None:
            return
        header = request.headers.get("authorization")
        if not header:
            raise Unauthorized("missing bearer token: send the header 'Authorization: Bearer <token>'")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token):
            raise Unauthorized("wrong bearer token")

    install_error_handlers(app, metrics, service)
    # concurrent small requests share one model call (edge_agent/coalesce.py) unless micro_batch is off
    coalescer = Coalescer(service) if settings.micro_batch else None
    app.state.coalescer = coalescer

    async def predict(request: Request) -> Response:
        check_auth(request)
        current = service.current
        if current is None:
            raise ModelNotReady("no model is loaded yet: install one with --bundle or publish a desired state")
        body = await read_body(request, max_body)
        records, batch = parse_records(body, current.feature_names, max_batch)
        key = request.headers.get("x-request-key")  # the A/B split's request key (ignored without a split)
        result: PredictionBatch
        if len(records) <= _INLINE_ROWS:
            if coalescer is not None and key is None:
                result = await coalescer.predict(records)
            else:
                result = service.predict(records, key)
        else:
            result = await run_in_threadpool(service.predict, records, key)
        if service.hybrid is not None:
            result = await service.resolve_hybrid(result, records)
        return _json(prediction_body(result, batch))

    # A plain Starlette route under FastAPI's router: no dependency solving or body model per request
    # (a FastAPI route costs ~60 µs more here); its OpenAPI operation is written by _install_openapi.
    app.add_route("/v1/predict", predict, methods=["POST"], include_in_schema=False)
    app.router.routes.insert(0, app.router.routes.pop())  # matched first: the hot route
    documented = {code: ERRORS[code] for code in (401, 422, 503)}
    errors = problem_responses(documented)
    lineage_errors = problem_responses({**documented, 404: "unknown prediction id"})

    async def feedback(request: Request) -> Response:
        check_auth(request)
        items, batch = parse_feedback(await read_body(request, max_body), max_batch)
        if not batch:
            single = service.feedback_for(items[0][0], items[0][1])
            service.flush_feedback_rows()
            return _json(single)
        accepted, rejected = [], []
        for prediction_id, label in items:
            try:
                accepted.append(service.feedback_for(prediction_id, label))
            except EdgeloopError as exc:
                rejected.append({"prediction_id": prediction_id, "error": type(exc).__name__, "detail": exc.message})
        service.flush_feedback_rows()
        return _json({"accepted": len(accepted), "rejected": rejected, "results": accepted})

    app.add_route("/v1/feedback", feedback, methods=["POST"], include_in_schema=False)

    async def explain(request: Request) -> Response:
        """The served model's answer plus each record's top-k feature contributions (edge_agent/explain.py)."""
        check_auth(request)
        current = service.current
        if current is None:
            raise ModelNotReady("no model is loaded yet: install one with --bundle or publish a desired state")
        top_k = parse_top_k(request.query_params.get("top_k"), settings.explain_top_k, len(current.feature_names))
        records, batch = parse_records(await read_body(request, max_body), current.feature_names, max_batch)
        inputs = service.key_fields.strip(records, current.feature_names)  # A/B key fields, as /v1/predict
        items = await run_in_threadpool(explain_records, current.model, inputs, top_k)
        head = {"model": current.manifest.name, "model_version": current.manifest.version}
        return _json({**head, "explanations": items} if batch else {**head, **items[0]})

    app.add_route("/v1/explain", explain, methods=["POST"], include_in_schema=False)

    @app.get("/v1/predictions/{prediction_id}/lineage", responses=lineage_errors)
    async def lineage(request: Request, prediction_id: str) -> Response:
        """Where a prediction came from: model version, bundle, run id, training data hash, code version."""
        check_auth(request)
        found, facts = service.lineage(prediction_id), status()
        return _json({"device_id": facts.get("device_id"), "group": facts.get("group"), **found})

    @app.get("/v1/model", responses=errors)
    async def model_info(request: Request) -> Response:
        """The model being served (schema, classes, lineage) and the device's state."""
        check_auth(request)
        current = service.current
        summary: dict[str, Any] = {"ready": current is not None, **status()}
        if current is not None:
            m = current.manifest
            summary["model"] = {
                "name": m.name,
                "version": m.version,
                "sha256": m.onnx.sha256,
                "created_at": m.created_at,
                "target": m.target,
                "classes": m.classes,
                "inputs": [spec.model_dump() for spec in m.inputs],
                "golden_samples": len(m.golden_samples),
                "lineage": m.lineage.model_dump(),
                "bundle": current.bundle.path.name,
                "runtime": current.model.runtime,
            }
        return _json(summary)

    @app.get("/healthz")
    async def healthz() -> Response:
        """The process is alive (open, no token)."""
        return _json({"status": "ok"})

    @app.get("/readyz", responses={503: {"description": "no model loaded yet"}})
    async def readyz() -> Response:
        """200 when a model is loaded and serving, 503 otherwise (open, no token)."""
        current = service.current
        if current is None:
            return _json({"ready": False, "detail": "no model loaded"}, 503)
        return _json({"ready": True, "model": current.manifest.name, "model_version": current.manifest.version})

    @app.get("/metrics", response_class=Response)
    async def prometheus() -> Response:
        """Prometheus text format (open, no token)."""
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    install_openapi(app, service, token is not None)
    install_docs(app)
    # The field's other protocols, over the same prediction path: Open Inference Protocol V2 and MLflow scoring.
    protocols = ProtocolContext(service, metrics, check_auth, max_body, max_batch, coalescer)
    install_v2(app, protocols, AGENT_VERSION)
    install_mlflow(app, protocols, AGENT_VERSION)
    add_operations(app, {**V2_OPERATIONS, **MLFLOW_OPERATIONS})
    if install_bundle is not None:
        install_bundle_import(app, protocols, install_bundle, max_bytes=settings.download_max_bytes)
    return app
