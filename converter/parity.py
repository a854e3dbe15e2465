"""The parity gate: the ONNX model must agree with the sklearn model on held-out rows, on every runtime.

Labels must be identical and probabilities within a tolerance; the report names how far off they were.
`check_runtimes` runs the gate and the golden-sample replay through onnxruntime and through the numpy runtime
(what a device without onnxruntime serves with) and records both in the parity report.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from contracts.bundle import Bundle
from contracts.errors import ConversionError, ModelRejected, ParityCheckFailed, UnsupportedOperator
from contracts.manifest import FeatureSpec, ParityReport, RuntimeParity
from contracts.runtime import RUNTIMES, OnnxModel, encode_columns

__all__ = ["check_parity", "check_runtimes", "golden_rows", "records_of", "replay_golden_samples"]


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
        where = "" if onnx_model.runtime == "onnxruntime" else f" ({onnx_model.runtime} runtime)"
        raise ParityCheckFailed(
            f"parity gate failed on {len(features)} held-out rows{where}: {mismatches} label mismatches, "
            f"max abs probability difference {diff:.2e} (tolerance {tolerance:.0e})",
            max_abs_diff=diff,
            tolerance=tolerance,
            label_mismatches=mismatches,
        )
    return report


def _load(bundle: Bundle, runtime: str) -> OnnxModel:
    try:
        return OnnxModel.load(bundle, runtime=runtime)
    except UnsupportedOperator as exc:
        raise ConversionError(
            f"the numpy runtime (devices without onnxruntime) cannot run this model: it lacks {exc.operator}; "
            "convert a pipeline of the supported steps or add the operator to contracts/numpy_ops.py"
        ) from None


def _golden(model: OnnxModel) -> float:
    try:
        return model.check_golden_samples()
    except ModelRejected as exc:
        raise ConversionError(f"{model.runtime} runtime: {exc.message}") from None


def replay_golden_samples(bundle: Bundle) -> dict[str, float]:
    """Replay the bundle's golden samples on every runtime: runtime -> max |dp|. A failure names the runtime."""
    return {runtime: _golden(_load(bundle, runtime)) for runtime in RUNTIMES}


def check_runtimes(sklearn_model: object, bundle: Bundle, features: pd.DataFrame, tolerance: float) -> ParityReport:
    """The parity gate, then the golden replay, on both runtimes; the top-level numbers are onnxruntime's."""
    replays, reports = [], {}
    for runtime in RUNTIMES:
        model = _load(bundle, runtime)
        report = reports[runtime] = check_parity(sklearn_model, model, features, tolerance)
        replays.append(
            RuntimeParity(
                runtime=model.runtime,
                rows=report.rows,
                label_mismatches=report.label_mismatches,
                max_abs_diff=report.max_abs_diff,
                golden_max_abs_diff=_golden(model),
            )
        )
    return reports["onnxruntime"].model_copy(update={"runtimes": replays})


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
