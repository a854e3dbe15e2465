"""The parity gate: the ONNX model must agree with the sklearn model on held-out rows.

Labels must be identical and probabilities within a tolerance; the report names how far off they were.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from contracts.errors import ParityCheckFailed
from contracts.manifest import FeatureSpec, ParityReport
from contracts.runtime import OnnxModel, encode_columns

__all__ = ["check_parity", "golden_rows", "records_of"]


def check_parity(
    sklearn_model: object, onnx_model: OnnxModel, features: pd.DataFrame, tolerance: float
) -> ParityReport:
    expected_proba = np.asarray(sklearn_model.predict_proba(features))  # type: ignore[attr-defined]
    expected_labels = np.asarray(sklearn_model.predict(features))  # type: ignore[attr-defined]
    columns = {spec.name: features[spec.name].to_numpy() for spec in onnx_model.manifest.inputs}
    result = onnx_model.predict_feed(encode_columns(columns, onnx_model.manifest.inputs))
    diff = float(np.max(np.abs(result.probabilities.astype(np.float64) - expected_proba)))
    mismatches = int(np.sum(result.labels != expected_labels))
    report = ParityReport(rows=len(features), label_mismatches=mismatches, max_abs_diff=diff, tolerance=tolerance)
    if mismatches or diff > tolerance:
        raise ParityCheckFailed(
            f"parity gate failed on {len(features)} held-out rows: {mismatches} label mismatches, "
            f"max abs probability difference {diff:.2e} (tolerance {tolerance:.0e})",
            max_abs_diff=diff,
            tolerance=tolerance,
            label_mismatches=mismatches,
        )
    return report


def records_of(frame: pd.DataFrame, inputs: list[FeatureSpec]) -> list[dict]:
    """Rows as JSON-friendly records: NaN and the empty category become None (missing)."""
    records = []
    for values in frame.to_dict(orient="records"):
        record: dict[str, object] = {}
        for spec in inputs:
            value = values[spec.name]
            if spec.kind == "numeric":
                record[spec.name] = None if pd.isna(value) else float(value)
            else:
                record[spec.name] = None if (value is None or value == "" or pd.isna(value)) else str(value)
        records.append(record)
    return records


def golden_rows(features: pd.DataFrame, labels: pd.Series, count: int, seed: int = 0) -> pd.DataFrame:
    """Pick `count` held-out rows covering every class of `labels` and, when present, rows with missing values."""
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    classes = list(pd.unique(labels))
    per_class = max(1, count // (len(classes) + 1))
    positions = np.arange(len(features))
    for cls in classes:
        candidates = positions[(labels == cls).to_numpy()]
        chosen.extend(rng.choice(candidates, size=min(per_class, len(candidates)), replace=False).tolist())
    has_missing = (features.isna() | (features == "")).any(axis=1).to_numpy()
    missing_rows = [p for p in positions[has_missing] if p not in chosen]
    chosen.extend(missing_rows[: max(0, count - len(chosen)) // 2 or 1])
    rest = [p for p in positions if p not in set(chosen)]
    if len(chosen) < count and rest:
        chosen.extend(rng.choice(rest, size=min(count - len(chosen), len(rest)), replace=False).tolist())
    return features.iloc[sorted(set(chosen))[:count]]
