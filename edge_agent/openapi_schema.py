"""The agent's OpenAPI document: the response models, the error body (contracts.problem.Problem, answered as
application/problem+json), the hand-written operation of POST /v1/predict (a plain route, see api.py) and the
JSON schema of one input record, built from the model being served.

Categorical features list the training categories as examples, not as an enum: an unseen category is
accepted and predicted (the pipeline ignores it) and later counted as unseen for drift.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema

from contracts.manifest import Manifest
from contracts.predictions import BatchPrediction, SinglePrediction
from contracts.problem import PROBLEM_MEDIA_TYPE, Problem
from edge_agent.service import InferenceService

__all__ = ["ERRORS", "BatchPrediction", "SinglePrediction", "install_openapi", "record_schema"]

ERRORS = {
    400: "malformed JSON (or NaN / Infinity tokens)",
    401: "missing or wrong bearer token",
    413: "body over max_body_bytes or batch over max_batch",
    422: "a field is missing, unknown or of the wrong type (`field` names it)",
    503: "no model loaded yet",
}
_PROBLEM = {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}


def record_schema(manifest: Manifest | None) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(schema, example record) for the model being served; a generic object when none is loaded."""
    if manifest is None:
        generic = {"type": "object", "additionalProperties": {"type": ["number", "string", "null"]}}
        return generic, None
    properties: dict[str, Any] = {}
    for spec in manifest.inputs:
        kind = "number" if spec.kind == "numeric" else "string"
        prop: dict[str, Any] = {"type": [kind, "null"] if spec.nullable else kind}
        if spec.kind == "categorical" and spec.categories:
            prop["examples"] = spec.categories
            prop["description"] = "Seen in training: " + ", ".join(spec.categories) + " (others are accepted)."
        properties[spec.name] = prop
    schema = {
        "type": "object",
        "title": f"Record of {manifest.name} v{manifest.version}",
        "properties": properties,
        "required": [spec.name for spec in manifest.inputs],
        "additionalProperties": False,
    }
    example = dict(manifest.golden_samples[0].inputs) if manifest.golden_samples else None
    return schema, example


def _predict_operation(example: dict[str, Any] | None, auth: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """OpenAPI operation of POST /v1/predict and the component schemas it refers to."""
    _, defs = models_json_schema(
        [(SinglePrediction, "serialization"), (BatchPrediction, "serialization"), (Problem, "serialization")],
        ref_template="#/components/schemas/{model}",
    )
    record = {"$ref": "#/components/schemas/Record"}
    body: dict[str, Any] = {
        "schema": {
            "oneOf": [
                record,
                {"type": "array", "items": record},
                {
                    "type": "object",
                    "properties": {"records": {"type": "array", "items": record}},
                    "required": ["records"],
                },
            ]
        }
    }
    if example:
        body["example"] = example
    error = _PROBLEM
    answer = {
        "anyOf": [{"$ref": "#/components/schemas/SinglePrediction"}, {"$ref": "#/components/schemas/BatchPrediction"}]
    }
    operation: dict[str, Any] = {
        "summary": "Predict",
        "description": "Predict one record (answers one prediction) or a batch: a list of records or "
        '`{"records": [...]}` (answers `predictions`, in order). Categories not seen in training are accepted.',
        "operationId": "predict_v1_predict_post",
        "parameters": [
            {
                "name": "X-Request-Key",
                "in": "header",
                "required": False,
                "schema": {"type": "string"},
                "description": "The request's key for an A/B split (the same key always gets the same arm); "
                "records carrying the split's key field use that instead; ignored without a split.",
            }
        ],
        "requestBody": {"required": True, "content": {"application/json": body}},
        "responses": {
            "200": {
                "description": "One prediction, or one per record",
                "content": {"application/json": {"schema": answer}},
            },
            **{str(code): {"description": text, "content": error} for code, text in ERRORS.items()},
        },
    }
    if auth:
        operation["security"] = [{"bearer": []}]
    return operation, defs.get("$defs", {})


def _feedback_operation(auth: bool) -> dict[str, Any]:
    item = {
        "type": "object",
        "required": ["prediction_id", "label"],
        "additionalProperties": False,
        "properties": {
            "prediction_id": {"type": "string", "description": "The id a prediction returned."},
            "label": {"type": ["integer", "string"], "description": "The true class."},
        },
    }
    error = _PROBLEM
    operation: dict[str, Any] = {
        "summary": "Feedback",
        "description": 'The true label of an earlier prediction (or a list of them, or `{"feedback": [...]}`). '
        "It counts toward the accuracy reported in telemetry for the model version that made the prediction. "
        "An unknown or forgotten prediction id answers 404.",
        "operationId": "feedback_v1_feedback_post",
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"anyOf": [item, {"type": "array", "items": item}]}}},
        },
        "responses": {
            "200": {"description": "Recorded (a batch answers accepted / rejected counts)"},
            "404": {"description": "unknown prediction id", "content": error},
            **{str(code): {"description": ERRORS[code], "content": error} for code in (400, 401, 413, 422)},
        },
    }
    if auth:
        operation["security"] = [{"bearer": []}]
    return operation


def _explain_operation(auth: bool) -> dict[str, Any]:
    record = {"$ref": "#/components/schemas/Record"}
    error = _PROBLEM
    body = {
        "oneOf": [
            record,
            {"type": "array", "items": record},
            {"type": "object", "properties": {"records": {"type": "array", "items": record}}, "required": ["records"]},
        ]
    }
    operation: dict[str, Any] = {
        "summary": "Explain",
        "description": "The served model's answer to each record plus, for logistic regression, the top-k features "
        "by |contribution| to the log-odds of classes[1] (binary) or the predicted class's logit, with the base "
        "(an average record), the logit (base + every contribution) and a check against the model's probability. "
        "Tree ensembles answer `available: false`, the reason and the global permutation importance. Same body, "
        "auth and errors as /v1/predict; not counted as predictions in telemetry. See docs/edge-agent.md.",
        "operationId": "explain_v1_explain_post",
        "parameters": [
            {
                "name": "top_k",
                "in": "query",
                "required": False,
                "schema": {"type": "integer", "minimum": 1},
                "description": "Features listed per record (default: the agent's explain_top_k, 5).",
            }
        ],
        "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
        "responses": {
            "200": {"description": "One explanation, or `explanations` (one per record, in order)"},
            **{str(code): {"description": text, "content": error} for code, text in ERRORS.items()},
        },
    }
    if auth:
        operation["security"] = [{"bearer": []}]
    return operation


def install_openapi(app: FastAPI, service: InferenceService, auth: bool) -> None:
    """OpenAPI whose request schema and example come from the model being served (rebuilt after a swap)."""
    cache: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        current = service.current
        key = current.manifest.ref + current.manifest.onnx.sha256 if current else ""
        if cache.get("key") != key or "schema" not in cache:
            schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
            record, example = record_schema(current.manifest if current else None)
            operation, defs = _predict_operation(example, auth)
            schema["paths"] = {
                "/v1/predict": {"post": operation},
                "/v1/feedback": {"post": _feedback_operation(auth)},
                "/v1/explain": {"post": _explain_operation(auth)},
                **schema.get("paths", {}),
            }
            schemas = schema.setdefault("components", {}).setdefault("schemas", {})
            schemas.update(defs)
            schemas["Record"] = record
            if auth:
                schema["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
                for operation in schema["paths"]["/v1/model"].values():
                    operation["security"] = [{"bearer": []}]
            cache.update(key=key, schema=schema)
        return cache["schema"]

    app.openapi = openapi  # type: ignore[method-assign]
