"""Open Inference Protocol V2 (KServe V2 / Triton HTTP) tensors <-> the agent's records and answers.

A request has one input tensor per feature, named as the feature, of shape [n] or [n, 1]: a numeric feature
in any numeric datatype (FP32 as the ONNX graph has it; FP64 and integers are accepted too), a categorical
one as BYTES (UTF-8 strings). Tensor data comes as JSON (`data`, flat or nested) or, with Triton's binary
tensor extension (what tritonclient sends by default), as raw little-endian bytes after the JSON header,
`parameters.binary_data_size` per input and the header's length in `Inference-Header-Content-Length`.
A missing value is NaN (or null in JSON) for a number and the empty string for a category (as the
pipeline reads None). A request-key field of an A/B split (`request_key_fields`) may come as one more BYTES
or integer tensor.

The answer has the outputs `label` ([n], INT64 for integer classes, else BYTES), `probabilities` ([n, k] FP32,
classes in the manifest's order) and `prediction_id` ([n] BYTES, the ids `/v1/feedback` takes), each as JSON
or binary as asked (`outputs[].parameters.binary_data`, or `parameters.binary_data_output` for all).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from contracts.errors import SchemaError
from contracts.manifest import Manifest
from edge_agent.errors import BatchTooLarge, MalformedBody

__all__ = ["OUTPUTS", "InferRequest", "RequestedOutput", "encode_answer", "model_metadata", "parse_infer_request"]

OUTPUTS = ("label", "probabilities", "prediction_id")
_NUMERIC = {
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
}  # fmt: skip
_KEY_TYPES = frozenset({"BYTES", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"})
_ALLOWED = {None: _KEY_TYPES, "categorical": frozenset({"BYTES"}), "numeric": frozenset(_NUMERIC)}


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    records: list[dict[str, Any]]
    outputs: tuple[RequestedOutput, ...]


def parse_infer_request(
    body: bytes, header_length: str | None, manifest: Manifest, key_fields: frozenset[str], max_batch: int
) -> InferRequest:
    """Body -> records for `InferenceService.predict`; MalformedBody (400), SchemaError (422) or BatchTooLarge
    (413) naming the input at fault."""
    header, binary = _split(body, header_length)
    try:
        request = orjson.loads(header)
    except orjson.JSONDecodeError:
        try:  # tritonclient writes NaN for a missing number in a JSON tensor; Python's json reads it
            request = json.loads(header)
        except ValueError as exc:
            raise MalformedBody(f"inference request is not valid JSON: {exc}") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list) or not request["inputs"]:
        raise MalformedBody('send {"inputs": [{"name", "shape", "datatype", "data"}, ...]}: one tensor per feature')
    kinds = {spec.name: spec.kind for spec in manifest.inputs}
    columns: dict[str, list[Any]] = {}
    offset = 0
    rows: int | None = None
    for tensor in request["inputs"]:
        name, count, datatype, data = _tensor_head(tensor)
        if name in columns:
            raise SchemaError(f"input '{name}' is given twice", name)
        kind = kinds.get(name)
        if kind is None and name not in key_fields:
            raise SchemaError(f"unknown input '{name}': the model's inputs are {', '.join(kinds)}", name)
        if datatype not in _ALLOWED[kind]:
            want = "BYTES" if kind == "categorical" else "a numeric datatype (FP32)" if kind else "BYTES or INT64"
            raise SchemaError(f"input '{name}' is {datatype}: send {want}", name)
        if rows is None:
            rows = count
            if rows > max_batch:
                raise BatchTooLarge(f"batch of {rows} rows is over the limit of {max_batch} (max_batch)")
        elif count != rows:
            raise SchemaError(f"input '{name}' has {count} rows, the first input has {rows}: send the same", name)
        size = (tensor.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise MalformedBody(f"input '{name}': binary_data_size {size} is past the end of the body")
            values = _from_binary(name, datatype, binary[offset : offset + size])
            offset += size
        else:
            values = _flat(name, data)
        if len(values) != count:
            raise SchemaError(f"input '{name}' has {len(values)} values for shape [{count}]: send one per row", name)
        columns[name] = values
    missing = [name for name in kinds if name not in columns]
    if missing:
        raise SchemaError(f"input '{missing[0]}' is missing: send one tensor per feature", missing[0])
    names = list(columns)
    records = [dict(zip(names, row, strict=True)) for row in zip(*columns.values(), strict=True)]
    request_id = request.get("id")
    return InferRequest(
        id=request_id if isinstance(request_id, str) else None,
        records=records,
        outputs=_outputs(request),
    )


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    if not header_length.isdigit() or int(header_length) > len(body):
        raise MalformedBody(f"Inference-Header-Content-Length {header_length!r} does not fit a {len(body)}-byte body")
    return body[: int(header_length)], body[int(header_length) :]


def _tensor_head(tensor: Any) -> tuple[str, int, str, Any]:
    if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
        raise SchemaError("each input must be an object with 'name', 'shape', 'datatype' and 'data'")
    name, shape, datatype = tensor["name"], tensor.get("shape"), tensor.get("datatype")
    if type(shape) is list and type(datatype) is str and (shape[1:] == [1] or len(shape) == 1):  # the usual case
        rows = shape[0]
        if type(rows) is int and rows >= 1:
            return name, rows, datatype, tensor.get("data")
    if (
        not isinstance(shape, list)
        or not 1 <= len(shape) <= 2
        or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
        or shape[0] < 1
        or shape[1:] not in ([], [1])
    ):
        raise SchemaError(f"input '{name}' has shape {shape}: send [rows] or [rows, 1]", name)
    if not isinstance(datatype, str):
        raise SchemaError(f"input '{name}' has no datatype: FP32 for a number, BYTES for a category", name)
    return name, shape[0], datatype, tensor.get("data")


def _flat(name: str, data: Any) -> list[Any]:
    if type(data) is list and (not data or type(data[0]) is not list):  # flat: the usual case
        return data
    if not isinstance(data, list):
        raise SchemaError(f"input '{name}' has no 'data' list (nor parameters.binary_data_size)", name)
    if data and all(isinstance(item, list) for item in data):  # nested row-major [[v], [v], ...]
        if not all(len(item) == 1 for item in data):
            raise SchemaError(f"input '{name}': each row holds one value", name)
        return [item[0] for item in data]
    return data


def _from_binary(name: str, datatype: str, raw: bytes) -> list[Any]:
    if datatype != "BYTES":
        dtype = np.dtype(_NUMERIC[datatype]).newbyteorder("<")
        if len(raw) % dtype.itemsize:
            raise MalformedBody(f"input '{name}': {len(raw)} bytes is not a whole number of {datatype} values")
        return list(np.frombuffer(raw, dtype=dtype).tolist())
    values: list[Any] = []
    position = 0
    while position < len(raw):
        if position + 4 > len(raw):
            raise MalformedBody(f"input '{name}': a BYTES element is cut short")
        (length,) = struct.unpack_from("<I", raw, position)
        chunk = raw[position + 4 : position + 4 + length]
        if len(chunk) != length:
            raise MalformedBody(f"input '{name}': a BYTES element is cut short")
        try:
            values.append(chunk.decode())
        except UnicodeDecodeError:
            raise SchemaError(f"input '{name}': a BYTES element is not UTF-8 text", name) from None
        position += 4 + length
    return values


def _outputs(request: Mapping[str, Any]) -> tuple[RequestedOutput, ...]:
    everything = bool((request.get("parameters") or {}).get("binary_data_output", False))
    asked = request.get("outputs")
    if asked is None:
        return tuple(RequestedOutput(name, everything) for name in OUTPUTS)
    if not isinstance(asked, list):
        raise SchemaError("'outputs' must be a list of {\"name\": ...}", "outputs")
    result = []
    for item in asked:
        name = item.get("name") if isinstance(item, dict) else None
        if name not in OUTPUTS:
            raise SchemaError(f"unknown output {name!r}: the outputs are {', '.join(OUTPUTS)}", "outputs")
        binary = (item.get("parameters") or {}).get("binary_data", everything)
        result.append(RequestedOutput(name, bool(binary)))
    return tuple(result)


def _label_type(classes: Sequence[Any]) -> str:
    return "INT64" if all(isinstance(c, int) and not isinstance(c, bool) for c in classes) else "BYTES"


def model_metadata(manifest: Manifest) -> dict[str, Any]:
    """`GET /v2/models/{name}`: the inputs (one per feature) and the outputs."""
    return {
        "name": manifest.name,
        "versions": [str(manifest.version)],
        "platform": "onnxruntime_onnx",
        "inputs": [
            {"name": spec.name, "datatype": "FP32" if spec.kind == "numeric" else "BYTES", "shape": [-1, 1]}
            for spec in manifest.inputs
        ],
        "outputs": [
            {"name": "label", "datatype": _label_type(manifest.classes), "shape": [-1]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(manifest.classes)]},
            {"name": "prediction_id", "datatype": "BYTES", "shape": [-1]},
        ],
    }


def _binary(datatype: str, values: list[Any]) -> bytes:
    if datatype == "BYTES":
        encoded = [str(value).encode() for value in values]
        return b"".join(struct.pack("<I", len(item)) + item for item in encoded)
    return np.asarray(values, dtype=_NUMERIC[datatype]).astype(np.dtype(_NUMERIC[datatype]).newbyteorder("<")).tobytes()


def encode_answer(
    manifest: Manifest, class_keys: Sequence[str], predictions: Sequence[Mapping[str, Any]], request: InferRequest
) -> tuple[bytes, int | None]:
    """(body, JSON header length when binary outputs follow it, else None)."""
    rows = len(predictions)
    label_type = _label_type(manifest.classes)
    tensors = {
        "label": (label_type, [rows], [p["label"] for p in predictions]),
        "probabilities": (
            "FP32",
            [rows, len(class_keys)],
            [p["probabilities"].get(key, 0.0) for p in predictions for key in class_keys],
        ),
        "prediction_id": ("BYTES", [rows], [p["prediction_id"] for p in predictions]),
    }
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for wanted in request.outputs:
        datatype, shape, values = tensors[wanted.name]
        entry: dict[str, Any] = {"name": wanted.name, "datatype": datatype, "shape": shape}
        if wanted.binary:
            blob = _binary(datatype, values)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = values
        outputs.append(entry)
    answer: dict[str, Any] = {"model_name": manifest.name, "model_version": str(manifest.version), "outputs": outputs}
    if request.id is not None:
        answer["id"] = request.id
    header = orjson.dumps(answer)
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)
