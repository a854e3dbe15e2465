"""The one model runtime interface, served by onnxruntime or by the numpy runtime.

Every place that runs a bundle (edge agent, batch scoring, the converter's golden-sample replay) goes
through `OnnxModel`, so records are encoded the same way everywhere and predictions are identical.

    model = OnnxModel.load(bundle)                     # runtime="auto": onnxruntime when it imports, else numpy
    model = OnnxModel.load(bundle, runtime="numpy")    # contracts/runtime_numpy.py: numpy only (32-bit ARM)
    result = model.predict_records([{"temperature_c": 71.2, "machine_type": "press", ...}])
    result.labels, result.probabilities, model.runtime

onnxruntime is imported only when it serves, so a device without it (or choosing numpy) never loads it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from contracts.bundle import Bundle
from contracts.errors import InputError, IntegrityError, ModelRejected, SchemaError
from contracts.manifest import MISSING_CATEGORY, FeatureSpec, Manifest
from contracts.runtime_numpy import NumpySession

__all__ = [
    "RUNTIMES",
    "OnnxModel",
    "Prediction",
    "RuntimeChoice",
    "Session",
    "encode_columns",
    "encode_records",
    "onnxruntime_importable",
    "resolve_runtime",
]

RuntimeChoice = Literal["auto", "onnxruntime", "numpy"]
RUNTIMES = ("onnxruntime", "numpy")


class Session(Protocol):
    """What `OnnxModel` needs of a backend: onnxruntime's `InferenceSession.run` or `NumpySession.run`."""

    def run(self, output_names: Any, input_feed: Any, /) -> Any: ...


def onnxruntime_importable() -> bool:
    """True when `import onnxruntime` works here (it is absent on 32-bit ARM, where PyPI has no wheel)."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_runtime(choice: str = "auto") -> Literal["onnxruntime", "numpy"]:
    """The backend that serves for a `runtime` setting: auto = onnxruntime when it imports, else numpy."""
    if choice == "numpy":
        return "numpy"
    if choice not in ("auto", "onnxruntime"):
        raise InputError(f"runtime must be auto, onnxruntime or numpy, got {choice!r}")
    if onnxruntime_importable():
        return "onnxruntime"
    if choice == "onnxruntime":
        raise InputError(
            'runtime = "onnxruntime" but onnxruntime cannot be imported here; install it '
            '(pip install onnxruntime) or set runtime = "numpy" (EDGELOOP_AGENT_RUNTIME=numpy)'
        )
    return "numpy"


@dataclass(frozen=True)
class Prediction:
    labels: np.ndarray
    """One label per row, values from `manifest.classes`."""
    probabilities: np.ndarray
    """Shape (rows, classes), float32, columns in the order of `manifest.classes`."""


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _numeric(value: Any, spec: FeatureSpec, row: int) -> float:
    if value is None:
        if not spec.nullable:
            raise SchemaError(f"record {row}: field '{spec.name}' is required (got null)", spec.name)
        return math.nan
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SchemaError(f"record {row}: field '{spec.name}' must be a number, got {type(value).__name__}", spec.name)
    if isinstance(value, float) and math.isnan(value):
        if not spec.nullable:
            raise SchemaError(f"record {row}: field '{spec.name}' is NaN but is required", spec.name)
        return math.nan
    if isinstance(value, float) and math.isinf(value):
        raise SchemaError(f"record {row}: field '{spec.name}' is infinite", spec.name)
    if abs(value) > _FLOAT32_MAX:
        raise SchemaError(f"record {row}: field '{spec.name}' is out of the float32 range the model uses", spec.name)
    return float(value)


def _categorical(value: Any, spec: FeatureSpec, row: int) -> str:
    if value is None:
        if not spec.nullable:
            raise SchemaError(f"record {row}: field '{spec.name}' is required (got null)", spec.name)
        return MISSING_CATEGORY
    if not isinstance(value, str):
        raise SchemaError(
            f"record {row}: field '{spec.name}' must be a string category, got {type(value).__name__}",
            spec.name,
        )
    return value


def encode_records(
    records: Sequence[Mapping[str, Any]], inputs: Sequence[FeatureSpec], allow_extra: bool = False
) -> dict[str, np.ndarray]:
    """Check records against the schema and build the ONNX feed: one (n, 1) array per feature.

    Raises SchemaError naming the first bad field: missing, unknown (unless allow_extra), wrong type,
    null or NaN where the feature is not nullable, infinite.
    """
    if not records:
        raise SchemaError("the batch is empty; send at least one record")
    names = {spec.name for spec in inputs}
    feed: dict[str, np.ndarray] = {}
    for row, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise SchemaError(f"record {row} must be a JSON object of feature name -> value")
        if not allow_extra and len(record) != len(names):
            extra = sorted(set(record) - names)
            if extra:
                raise SchemaError(f"record {row}: unknown field '{extra[0]}'", extra[0])
        for spec in inputs:
            if spec.name not in record:
                raise SchemaError(f"record {row}: field '{spec.name}' is missing", spec.name)
    for spec in inputs:
        if spec.kind == "numeric":
            values = [_numeric(record[spec.name], spec, row) for row, record in enumerate(records)]
            feed[spec.name] = np.asarray(values, dtype=np.float32).reshape(-1, 1)
        else:
            cats = [_categorical(record[spec.name], spec, row) for row, record in enumerate(records)]
            feed[spec.name] = np.asarray(cats, dtype=object).reshape(-1, 1)
    return feed


def encode_columns(columns: Mapping[str, Any], inputs: Sequence[FeatureSpec]) -> dict[str, np.ndarray]:
    """Build the ONNX feed from columnar data (numpy arrays or lists), as batch scoring reads it."""
    feed: dict[str, np.ndarray] = {}
    for spec in inputs:
        if spec.name not in columns:
            raise SchemaError(f"column '{spec.name}' is missing", spec.name)
        column = columns[spec.name]
        if spec.kind == "numeric":
            array = np.asarray(column, dtype=np.float32).reshape(-1, 1)
        else:
            array = np.asarray(
                [MISSING_CATEGORY if value is None else str(value) for value in column], dtype=object
            ).reshape(-1, 1)
        feed[spec.name] = array
    return feed


def _python(value: Any) -> Any:
    """A numpy scalar as a plain Python value; string labels already come back as `str` (object arrays)."""
    return value.item() if isinstance(value, np.generic) else value


class OnnxModel:
    """A loaded bundle: a backend session (onnxruntime or numpy) plus the manifest that describes it."""

    def __init__(self, manifest: Manifest, session: Session) -> None:
        self.manifest = manifest
        self.session = session
        self.runtime: Literal["onnxruntime", "numpy"] = "numpy" if isinstance(session, NumpySession) else "onnxruntime"
        self.classes = np.asarray(manifest.classes)
        self._outputs = [manifest.onnx.label_output, manifest.onnx.probabilities_output]

    @classmethod
    def load(
        cls,
        bundle: Bundle,
        intra_op_threads: int = 0,
        inter_op_threads: int = 1,
        spin: bool = False,
        *,
        runtime: str = "auto",
        compile_trees: bool = False,
    ) -> OnnxModel:
        """Create a session for a verified bundle; intra_op_threads=0 lets onnxruntime use every core.

        `runtime` picks the backend (see `resolve_runtime`); the thread settings apply to onnxruntime only,
        `compile_trees` to the numpy runtime only (its tree ensembles walked by numba: batch scoring's runtime).
        Thread spinning is off by default: on a busy 2-core device a spinning pool steals the CPU that the
        web server and the other process need (measured: a 10k-row batch took 297 ms spinning vs 140 ms not).
        """
        expected = bundle.manifest.feature_names
        if resolve_runtime(runtime) == "numpy":
            numpy_session = NumpySession.load(bundle.model_path, compile_trees)
            if sorted(numpy_session.input_names) != sorted(expected):
                raise IntegrityError(
                    f"model inputs {numpy_session.input_names} do not match the manifest's schema {expected}"
                )
            return cls(bundle.manifest, numpy_session)
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = inter_op_threads
        options.log_severity_level = 3
        if not spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        try:
            session = ort.InferenceSession(
                str(bundle.model_path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises several untyped errors for bad files
            raise IntegrityError(f"onnxruntime cannot load {bundle.model_path}: {exc}") from None
        actual = [node.name for node in session.get_inputs()]
        if sorted(actual) != sorted(expected):
            raise IntegrityError(f"model inputs {actual} do not match the manifest's schema {expected}")
        return cls(bundle.manifest, session)

    def predict_feed(self, feed: Mapping[str, np.ndarray]) -> Prediction:
        labels, probabilities = self.session.run(self._outputs, dict(feed))
        return Prediction(labels=np.asarray(labels).reshape(-1), probabilities=np.asarray(probabilities))

    def predict_records(self, records: Sequence[Mapping[str, Any]], allow_extra: bool = False) -> Prediction:
        return self.predict_feed(encode_records(records, self.manifest.inputs, allow_extra=allow_extra))

    def check_golden_samples(self) -> float:
        """Replay the manifest's golden samples; return the max abs probability difference.

        Raises ModelRejected when a label differs or a probability is off by more than the tolerance.
        """
        samples = self.manifest.golden_samples
        if not samples:
            raise ModelRejected("the manifest has no golden samples; refusing an unchecked model")
        result = self.predict_records([sample.inputs for sample in samples])
        expected = np.asarray([sample.probabilities for sample in samples], dtype=np.float64)
        worst = float(np.max(np.abs(result.probabilities.astype(np.float64) - expected)))
        for index, sample in enumerate(samples):
            answered = _python(result.labels[index])
            if answered != sample.label:
                raise ModelRejected(f"golden sample {index}: model answered {answered!r}, expected {sample.label!r}")
        if worst > self.manifest.golden_tolerance:
            raise ModelRejected(
                f"golden samples: probabilities differ by {worst:.2e} > tolerance {self.manifest.golden_tolerance:.0e}"
            )
        return worst
