"""MLflow's scoring protocol on the agent (what `mlflow models serve` answers), so MLflow's scoring client,
`mlflow models predict`-style scripts and existing integrations call a device unchanged.

    POST /invocations   application/json with exactly one of dataframe_split, dataframe_records, instances,
                        inputs (and optionally params, ignored: the bundle takes none); or text/csv with a
                        header row                                                            (bearer token)
    GET  /ping, /health 200 when a model is loaded, 503 otherwise                             (open)
    GET  /version       the agent's version                                                   (open)

The answer is MLflow's `{"predictions": [label, ...]}` (a scikit-learn classifier served by MLflow answers its
labels) with what `/v1/predict` also says beside it, as MLflow's own metadata keys are: `probabilities`
(one {class: p} per row), `prediction_ids` (for `/v1/feedback`), `model` and `model_version`. The rows go
through the same prediction path as `/v1/predict` (protocol_support.py). NaN in the JSON (which MLflow's
client writes for a missing value, in a category too) is read as a missing value, as MLflow's server reads it.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response

from contracts.errors import EdgeloopError, InputError, SchemaError
from contracts.manifest import FeatureSpec
from edge_agent.errors import BatchTooLarge, MalformedBody
from edge_agent.protocol_support import ProtocolContext, json_response

__all__ = ["MLFLOW_OPERATIONS", "install_mlflow", "parse_invocation"]

FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
_ERROR_CODES = {401: "UNAUTHENTICATED", 404: "RESOURCE_DOES_NOT_EXIST", 503: "TEMPORARILY_UNAVAILABLE"}


def parse_invocation(
    body: bytes, content_type: str, inputs: Sequence[FeatureSpec], max_batch: int
) -> list[dict[str, Any]]:
    """An /invocations body -> records; MalformedBody (400), SchemaError (422), BatchTooLarge (413)."""
    kind = content_type.split(";")[0].strip().lower() or "application/json"
    if kind == "text/csv":
        records = _csv_records(body, inputs)
    elif kind == "application/json":
        records = _json_records(body, [spec.name for spec in inputs])
        if b"NaN" in body:  # pandas writes a missing category as NaN too: the pipeline reads it as None
            categorical = [spec.name for spec in inputs if spec.kind == "categorical"]
            records = [_nan_to_none(record, categorical) for record in records]
    else:
        raise InputError(f"content type {kind!r} is not supported: send application/json or text/csv")
    if not records:
        raise SchemaError("no rows: send at least one", "inputs")
    if len(records) > max_batch:
        raise BatchTooLarge(f"batch of {len(records)} rows is over the limit of {max_batch} (max_batch)")
    return records


def _nan_to_none(record: dict[str, Any], names: list[str]) -> dict[str, Any]:
    if not any(isinstance(record.get(name), float) and math.isnan(record[name]) for name in names):
        return record
    return {k: None if k in names and isinstance(v, float) and math.isnan(v) else v for k, v in record.items()}


def _json_records(body: bytes, names: list[str]) -> list[dict[str, Any]]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        try:  # MLflow's client writes NaN for a missing value; Python's json reads it, as MLflow's server does
            data = json.loads(body)
        except ValueError as exc:
            raise MalformedBody(f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise MalformedBody(f"send a JSON object with exactly one of {', '.join(FORMATS)}")
    given = [key for key in FORMATS if key in data]
    extra = sorted(set(data) - {*FORMATS, "params"})
    if len(given) != 1 or extra:
        raise SchemaError(f"send exactly one of {', '.join(FORMATS)} (got {sorted(data)})", "inputs")
    key = given[0]
    value = data[key]
    if key == "dataframe_split":
        if not isinstance(value, dict) or not isinstance(value.get("data"), list):
            raise SchemaError('dataframe_split must be {"columns": [...], "data": [[...], ...]}', key)
        columns = value.get("columns", names)
        if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
            raise SchemaError("dataframe_split.columns must be a list of column names", key)
        return _rows(value["data"], columns, key)
    if key == "dataframe_records":
        if not isinstance(value, list) or not all(isinstance(r, dict) for r in value):
            raise SchemaError("dataframe_records must be a list of {column: value} objects", key)
        return list(value)
    return _tensor_input(value, names, key)  # instances / inputs


def _tensor_input(value: Any, names: list[str], key: str) -> list[dict[str, Any]]:
    """TF-serving style: a list of records or of rows (in the model's input order), or {column: [values]}."""
    if isinstance(value, dict):
        if all(not isinstance(v, list) for v in value.values()):
            return [dict(value)]  # one row as {column: value}
        lengths = {len(v) for v in value.values() if isinstance(v, list)}
        if len(lengths) != 1 or not all(isinstance(v, list) for v in value.values()):
            raise SchemaError(f"{key}: every column must be a list of the same length", key)
        columns = list(value)
        return [dict(zip(columns, row, strict=True)) for row in zip(*value.values(), strict=True)]
    if isinstance(value, list) and all(isinstance(r, dict) for r in value):
        return list(value)
    if isinstance(value, list):
        return _rows(value, names, key)
    raise SchemaError(f"{key} must be a list of records, a list of rows or {{column: [values]}}", key)


def _rows(rows: list[Any], columns: list[str], key: str) -> list[dict[str, Any]]:
    records = []
    for index, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != len(columns):
            raise SchemaError(f"{key}: row {index} must be a list of {len(columns)} values ({', '.join(columns)})", key)
        records.append(dict(zip(columns, row, strict=True)))
    return records


def _csv_records(body: bytes, inputs: Sequence[FeatureSpec]) -> list[dict[str, Any]]:
    try:
        reader = csv.DictReader(io.StringIO(body.decode()))
        rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise MalformedBody(f"request body is not CSV text: {exc}") from None
    numeric = {spec.name for spec in inputs if spec.kind == "numeric"}
    records = []
    for index, row in enumerate(rows):
        record: dict[str, Any] = {}
        for name, text in row.items():
            if name is None:
                raise SchemaError(f"CSV row {index} has more values than the header has columns", "inputs")
            if text is None or text == "":
                record[name] = None
            elif name in numeric:
                try:
                    record[name] = float(text)
                except ValueError:
                    raise SchemaError(f"record {index}: field '{name}' must be a number, got {text!r}", name) from None
            else:
                record[name] = text
        records.append(record)
    return records


def install_mlflow(app: FastAPI, ctx: ProtocolContext, server_version: str) -> None:
    """Add /invocations, /ping, /health and /version (plain Starlette routes)."""

    async def invocations(request: Request) -> Response:
        try:
            ctx.check_auth(request)
            loaded = ctx.served()
            records = parse_invocation(
                await ctx.body(request),
                request.headers.get("content-type", ""),
                loaded.manifest.inputs,
                ctx.max_batch,
            )
            result = await ctx.predict(records, request)
        except EdgeloopError as exc:
            code = _ERROR_CODES.get(exc.http_status, "BAD_REQUEST" if exc.http_status < 500 else "INTERNAL_ERROR")
            return ctx.error(exc, {"error_code": code, "message": exc.message}, prediction=True)
        manifest = result.model.manifest
        return json_response(
            {
                "predictions": [p["label"] for p in result.predictions],
                "probabilities": [p["probabilities"] for p in result.predictions],
                "prediction_ids": [p["prediction_id"] for p in result.predictions],
                "model": manifest.name,
                "model_version": manifest.version,
            }
        )

    async def ping(_request: Request) -> Response:
        ready = ctx.service.current is not None
        return Response("\n", 200 if ready else 503, media_type="application/json")

    async def version(_request: Request) -> Response:
        return Response(server_version, media_type="text/plain")

    app.add_route("/invocations", invocations, methods=["POST"], include_in_schema=False)
    app.router.routes.insert(1, app.router.routes.pop())  # a hot route: matched right after /v1/predict
    app.add_route("/ping", ping, methods=["GET"], include_in_schema=False)
    app.add_route("/health", ping, methods=["GET"], include_in_schema=False)
    app.add_route("/version", version, methods=["GET"], include_in_schema=False)


_RECORDS = {"type": "array", "items": {"type": "object"}}
MLFLOW_OPERATIONS: dict[str, dict[str, Any]] = {
    "/invocations": {
        "post": {
            "tags": ["mlflow scoring protocol"],
            "summary": "Predict (MLflow's scoring protocol): exactly one of dataframe_split, dataframe_records, "
            "instances, inputs; answers predictions (labels) plus probabilities and prediction_ids.",
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "dataframe_split": {
                                    "type": "object",
                                    "properties": {
                                        "columns": {"type": "array", "items": {"type": "string"}},
                                        "data": {"type": "array", "items": {"type": "array", "items": {}}},
                                    },
                                },
                                "dataframe_records": _RECORDS,
                                "instances": _RECORDS,
                                "inputs": {},
                                "params": {"type": "object"},
                            },
                        }
                    },
                    "text/csv": {"schema": {"type": "string"}},
                },
            },
            "responses": {
                "200": {"description": "OK", "content": {"application/json": {"schema": {}}}},
                "401": {"description": "missing or wrong bearer token"},
            },
        }
    },
    "/ping": {
        "get": {
            "tags": ["mlflow scoring protocol"],
            "summary": "200 when a model is loaded, else 503 (open).",
            "responses": {"200": {"description": "ready"}},
        }
    },
}
"""The MLflow operations in the agent's OpenAPI document (`/docs`)."""
