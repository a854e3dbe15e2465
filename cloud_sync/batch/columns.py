"""Column plumbing shared by both engines: check an Arrow schema against a manifest, and turn one Arrow
record batch into one output batch (passthrough columns + predictions).

The output of a job has, in this order: every input column the model does not use (ids, timestamps,
the target when present), `prediction` (the label), one `probability_<class>` per class (float32, the
model's own values), `model_name` and `model_version`. Inputs are matched by name; numeric features accept
any integer, floating or decimal Arrow type (cast to float32, null -> NaN), categorical features any
string type (null -> "", the model's missing category). Both engines call `score_batch`, so the local and
the Spark engine cannot disagree on encoding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from contracts.errors import InputError, SchemaError
from contracts.manifest import MISSING_CATEGORY, FeatureSpec, Manifest
from contracts.runtime import OnnxModel, encode_columns

__all__ = ["OUTPUT_COLUMNS", "ScoringPlan", "check_schema", "feature_columns", "score_batch"]

OUTPUT_COLUMNS = ("prediction", "model_name", "model_version")
"""Fixed output column names (plus `probability_<class>`), which an input column may not reuse."""


@dataclass(frozen=True)
class ScoringPlan:
    """What a job reads and writes: which input columns feed the model and the output schema."""

    inputs: tuple[FeatureSpec, ...]
    passthrough: tuple[str, ...]
    """Input columns the model does not use, in input order, copied to the output unchanged."""
    label_type: pa.DataType
    probability_columns: tuple[str, ...]
    model_name: str
    model_version: int
    output_schema: pa.Schema

    @property
    def prediction_fields(self) -> list[pa.Field]:
        """The fields appended after the passthrough columns."""
        return [field for field in self.output_schema if field.name not in self.passthrough]


def _is_numeric(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind)


def _is_text(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)


def _value_type(kind: pa.DataType) -> pa.DataType:
    return kind.value_type if pa.types.is_dictionary(kind) else kind


def check_schema(schema: pa.Schema, manifest: Manifest, source: str) -> ScoringPlan:
    """Match `schema` against the manifest's inputs; raise one SchemaError naming the first bad column."""
    names = schema.names
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise InputError(f"{source} has the column '{duplicated[0]}' more than once")
    for spec in manifest.inputs:
        if spec.name not in names:
            shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
            raise SchemaError(
                f"{source} lacks the model's column '{spec.name}' (it has: {shown or 'no columns'})", spec.name
            )
        kind = _value_type(schema.field(spec.name).type)
        if pa.types.is_null(kind):
            continue  # an entirely empty column: every value is missing, which the model accepts
        if spec.kind == "numeric" and not _is_numeric(kind):
            raise SchemaError(
                f"column '{spec.name}' in {source} is {kind}, but the model expects a number "
                "(any integer, float or decimal type)",
                spec.name,
            )
        if spec.kind == "categorical" and not _is_text(kind):
            raise SchemaError(
                f"column '{spec.name}' in {source} is {kind}, but the model expects a string category", spec.name
            )
    used = set(manifest.feature_names)
    passthrough = tuple(name for name in names if name not in used)
    probability_columns = tuple(f"probability_{cls}" for cls in manifest.classes)
    taken = set(OUTPUT_COLUMNS) | set(probability_columns)
    for name in passthrough:
        if name in taken:
            raise InputError(
                f"input column '{name}' in {source} would collide with an output column of the same name; "
                "rename or drop it"
            )
    label_type = pa.string() if any(isinstance(cls, str) for cls in manifest.classes) else pa.int64()
    fields = [schema.field(name) for name in passthrough]
    fields.append(pa.field("prediction", label_type))
    fields.extend(pa.field(name, pa.float32()) for name in probability_columns)
    fields.append(pa.field("model_name", pa.string()))
    fields.append(pa.field("model_version", pa.int64()))
    return ScoringPlan(
        inputs=tuple(manifest.inputs),
        passthrough=passthrough,
        label_type=label_type,
        probability_columns=probability_columns,
        model_name=manifest.name,
        model_version=manifest.version,
        output_schema=pa.schema(fields),
    )


def _numeric_column(column: pa.Array) -> np.ndarray:
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    if pa.types.is_null(column.type):
        return np.full(len(column), np.nan, dtype=np.float32)
    as_float = pc.cast(column, pa.float32(), safe=False)
    if as_float.null_count:
        as_float = pc.fill_null(as_float, pa.scalar(np.nan, pa.float32()))
    return as_float.to_numpy(zero_copy_only=False)


def _categorical_column(column: pa.Array) -> np.ndarray:
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    if pa.types.is_null(column.type):
        return np.full(len(column), MISSING_CATEGORY, dtype=object)
    if not pa.types.is_string(column.type):
        column = pc.cast(column, pa.string())
    if column.null_count:
        column = pc.fill_null(column, MISSING_CATEGORY)
    return column.to_numpy(zero_copy_only=False)


def feature_columns(batch: pa.RecordBatch, inputs: Sequence[FeatureSpec]) -> dict[str, np.ndarray]:
    """The model's columns of `batch` as numpy arrays, nulls replaced by the model's missing values."""
    columns: dict[str, np.ndarray] = {}
    for spec in inputs:
        column = batch.column(spec.name)
        columns[spec.name] = _numeric_column(column) if spec.kind == "numeric" else _categorical_column(column)
    return columns


def score_batch(model: OnnxModel, plan: ScoringPlan, batch: pa.RecordBatch) -> pa.RecordBatch:
    """Score one input batch and return the output batch (schema `plan.output_schema`)."""
    rows = batch.num_rows
    if rows == 0:
        return pa.RecordBatch.from_pylist([], schema=plan.output_schema)
    prediction = model.predict_feed(encode_columns(feature_columns(batch, plan.inputs), plan.inputs))
    arrays: list[pa.Array] = [batch.column(name) for name in plan.passthrough]
    arrays.append(pa.array(prediction.labels, type=plan.label_type))
    probabilities = np.asarray(prediction.probabilities, dtype=np.float32)
    arrays.extend(pa.array(np.ascontiguousarray(probabilities[:, j])) for j in range(probabilities.shape[1]))
    arrays.append(pa.repeat(pa.scalar(plan.model_name, pa.string()), rows))
    arrays.append(pa.repeat(pa.scalar(plan.model_version, pa.int64()), rows))
    return pa.RecordBatch.from_arrays(arrays, schema=plan.output_schema)
