"""Open Inference Protocol V2 (KServe V2, Triton's HTTP API) on the agent, so `tritonclient.http`, KServe and
MLServer clients call a device unchanged. Thin routes over the one prediction path (protocol_support.py);
the tensors are converted in v2_tensors.py.

    GET  /v2                                  server metadata                                    (open)
    GET  /v2/health/live                      the process is alive                               (open)
    GET  /v2/health/ready                     a model is loaded (503 otherwise)                  (open)
    GET  /v2/models/{name}[/versions/{v}]/ready   this model (and version) is served (404 otherwise) (open)
    GET  /v2/models/{name}[/versions/{v}]     inputs (one per feature) and outputs               (bearer token)
    POST /v2/models/{name}[/versions/{v}]/infer   predict                                        (bearer token)

`name` is the manifest's model name; `v` its version (the served one only: a device serves one version).
Errors are the agent's problem+json with the V2 `error` member beside `detail`.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request, Response

from contracts.errors import EdgeloopError, NotFoundError
from edge_agent.loaded import LoadedModel
from edge_agent.protocol_support import ProtocolContext, json_response
from edge_agent.v2_tensors import OUTPUTS, encode_answer, model_metadata, parse_infer_request

__all__ = ["V2_OPERATIONS", "install_v2"]

_VERSIONED = "/v2/models/{name}/versions/{version}"


def _check_model(loaded: LoadedModel, params: dict[str, Any]) -> None:
    manifest = loaded.manifest
    name, version = params.get("name"), params.get("version")
    if name != manifest.name:
        raise NotFoundError(f"model '{name}' is not served here: this device serves '{manifest.name}'")
    if version is not None and version != str(manifest.version):
        raise NotFoundError(
            f"{manifest.name} version {version} is not served here: this device serves version {manifest.version}"
        )


def install_v2(app: FastAPI, ctx: ProtocolContext, server_version: str) -> None:
    """Add the V2 routes to the agent's app (plain Starlette routes: no per-request dependency solving)."""

    async def infer(request: Request) -> Response:
        try:
            ctx.check_auth(request)
            loaded = ctx.served()
            _check_model(loaded, request.path_params)
            parsed = parse_infer_request(
                await ctx.body(request),
                request.headers.get("inference-header-content-length"),
                loaded.manifest,
                ctx.service.key_fields.fields,
                ctx.max_batch,
            )
            result = await ctx.predict(parsed.records, request)
        except EdgeloopError as exc:
            return ctx.error(exc, {"error": exc.message}, prediction=True)
        body, header_length = encode_answer(result.model.manifest, result.model.class_keys, result.predictions, parsed)
        if header_length is None:
            return Response(body, media_type="application/json")
        headers = {"Inference-Header-Content-Length": str(header_length)}
        return Response(body, headers=headers, media_type="application/octet-stream")

    async def metadata(request: Request) -> Response:
        try:
            ctx.check_auth(request)
            loaded = ctx.served()
            _check_model(loaded, request.path_params)
        except EdgeloopError as exc:
            return ctx.error(exc, {"error": exc.message}, prediction=False)
        return json_response(model_metadata(loaded.manifest))

    async def model_ready(request: Request) -> Response:
        try:
            _check_model(ctx.served(), request.path_params)
        except EdgeloopError as exc:
            return ctx.error(exc, {"error": exc.message}, prediction=False)
        return json_response({"name": request.path_params["name"], "ready": True})

    async def live(_request: Request) -> Response:
        return json_response({"live": True})

    async def ready(_request: Request) -> Response:
        loaded = ctx.service.current
        return json_response({"ready": loaded is not None}, 200 if loaded is not None else 503)

    async def server(_request: Request) -> Response:
        return json_response(
            {"name": "edgeloop-agent", "version": server_version, "extensions": ["binary_tensor_data"]}
        )

    for path in ("/v2/models/{name}/infer", f"{_VERSIONED}/infer"):
        app.add_route(path, infer, methods=["POST"], include_in_schema=False)
        app.router.routes.insert(1, app.router.routes.pop())  # a hot route: matched right after /v1/predict
    for path in ("/v2/models/{name}/ready", f"{_VERSIONED}/ready"):
        app.add_route(path, model_ready, methods=["GET"], include_in_schema=False)
    for path in ("/v2/models/{name}", _VERSIONED):
        app.add_route(path, metadata, methods=["GET"], include_in_schema=False)
    app.add_route("/v2/health/live", live, methods=["GET"], include_in_schema=False)
    app.add_route("/v2/health/ready", ready, methods=["GET"], include_in_schema=False)
    app.add_route("/v2", server, methods=["GET"], include_in_schema=False)


_NAME = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}]
_TENSOR = {
    "type": "object",
    "required": ["name", "shape", "datatype"],
    "properties": {
        "name": {"type": "string", "description": "A feature's name."},
        "shape": {"type": "array", "items": {"type": "integer"}, "description": "[rows] or [rows, 1]"},
        "datatype": {
            "type": "string",
            "description": "FP32 (or another numeric type) for a number, BYTES for a category",
        },
        "data": {"type": "array", "items": {}, "description": "One value per row (or parameters.binary_data_size)."},
        "parameters": {"type": "object"},
    },
}
_INFER_BODY = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "inputs": {"type": "array", "items": _TENSOR, "description": "One tensor per feature."},
        "outputs": {
            "type": "array",
            "items": {"type": "object", "properties": {"name": {"type": "string", "enum": list(OUTPUTS)}}},
        },
        "parameters": {"type": "object"},
    },
}


def _operation(summary: str, *, auth: bool, body: dict[str, Any] | None = None) -> dict[str, Any]:
    operation: dict[str, Any] = {"tags": ["open inference protocol v2"], "summary": summary, "responses": {}}
    operation["responses"]["200"] = {"description": "OK", "content": {"application/json": {"schema": {}}}}
    if body is not None:
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    if auth:
        operation["responses"]["401"] = {"description": "missing or wrong bearer token"}
    return operation


V2_OPERATIONS: dict[str, dict[str, Any]] = {
    "/v2/health/live": {"get": _operation("The process is alive (open).", auth=False)},
    "/v2/health/ready": {"get": _operation("A model is loaded; 503 otherwise (open).", auth=False)},
    "/v2/models/{name}": {
        "get": {**_operation("Inputs and outputs of the served model.", auth=True), "parameters": _NAME}
    },
    "/v2/models/{name}/ready": {
        "get": {**_operation("This model is served; 404 otherwise (open).", auth=False), "parameters": _NAME}
    },
    "/v2/models/{name}/infer": {
        "post": {
            **_operation(
                "Predict: one input tensor per feature (BYTES for a category); outputs label, probabilities "
                "and prediction_id.",
                auth=True,
                body=_INFER_BODY,
            ),
            "parameters": _NAME,
        }
    },
}
"""The V2 operations in the agent's OpenAPI document (`/docs`); the versioned paths are the same operations."""
