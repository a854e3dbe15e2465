"""The bundle manifest (contract v1): what a converted model is, how to feed it, and how to check it.

A bundle is a directory with `model.onnx`, `manifest.json` and `manifest.sig` (a detached Ed25519
signature over `canonical_bytes(manifest)`). The manifest pins the ONNX file by sha256 and size, so the
signature covers the model too.

Input convention: the ONNX graph has one input per feature, named after it, shape `[None, 1]`;
numeric features are float32 (missing = NaN), categorical features are strings (missing = "").
Outputs are plain tensors: `label` and `probabilities` (columns in the order of `classes`).

Explanations (optional, appended fields): `importance` is the trainer's global permutation importance on
held-out rows; `explainer` holds what the edge agent needs to split a linear model's logit into per-feature
contributions without scikit-learn. Both are omitted from the signed bytes when absent, so bundles written
before these fields existed still verify.
"""

from __future__ import annotations

import hashlib
import os
from typing import Annotated, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "MANIFEST_FILE",
    "MISSING_CATEGORY",
    "MODEL_FILE",
    "SCHEMA_VERSION",
    "SIGNATURE_FILE",
    "CategoricalProfile",
    "CategoricalTerm",
    "FeatureImportance",
    "FeatureProfile",
    "FeatureSpec",
    "GlobalImportance",
    "GoldenSample",
    "Lineage",
    "LinearExplainer",
    "Manifest",
    "NumericProfile",
    "NumericTerm",
    "OnnxInfo",
    "ParityReport",
    "RuntimeParity",
    "canonical_bytes",
    "sha256_file",
    "why_no_explanation",
]

SCHEMA_VERSION = "v1"
MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = "manifest.sig"
MISSING_CATEGORY = ""
"""How a missing categorical value is fed to the model (the pipeline treats it as its own category)."""

FeatureValue = float | int | str | bool | None
ClassValue = int | str


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FeatureSpec(_Strict):
    """One model input, in the order the model expects them."""

    name: str
    kind: Literal["numeric", "categorical"]
    categories: list[str] | None = None
    """Categories seen in training (categorical only); others are accepted and counted as unseen."""
    nullable: bool = True
    """Whether a missing value is acceptable (the pipeline imputes it)."""


class NumericProfile(_Strict):
    """Reference distribution of a numeric feature on the training data, for drift."""

    kind: Literal["numeric"] = "numeric"
    bin_edges: list[float]
    """Inner edges of the bins (quantiles of the training data); bins are (-inf, e0], (e0, e1] ... (en, inf)."""
    proportions: list[float]
    """Share of non-missing training values in each bin; len(bin_edges) + 1 entries summing to 1."""
    missing_rate: float
    minimum: float
    maximum: float
    mean: float
    std: float


class CategoricalProfile(_Strict):
    kind: Literal["categorical"] = "categorical"
    frequencies: dict[str, float]
    """Share of each category among non-missing training values."""
    missing_rate: float


FeatureProfile = Annotated[NumericProfile | CategoricalProfile, Field(discriminator="kind")]


class GoldenSample(_Strict):
    """A record with the reference model's answer; replayed on every load to prove the session is right."""

    inputs: dict[str, FeatureValue]
    label: ClassValue
    probabilities: list[float]


class Lineage(_Strict):
    run_id: str
    registered_model: str | None = None
    model_version: str | None = None
    data_hash: str
    data_rows: int
    data_source: str
    code_version: str
    estimator: str
    metrics: dict[str, float]
    """Held-out metrics from the trainer (never computed on training rows)."""


class OnnxInfo(_Strict):
    file: str = MODEL_FILE
    sha256: str
    size: int
    opset: int
    ml_opset: int | None = None
    label_output: str = "label"
    probabilities_output: str = "probabilities"


class RuntimeParity(_Strict):
    """What one runtime answered at conversion, against the sklearn model."""

    runtime: Literal["onnxruntime", "numpy"]
    rows: int
    """Held-out rows compared."""
    label_mismatches: int
    max_abs_diff: float
    """Largest |probability difference| on the held-out rows."""
    golden_max_abs_diff: float
    """Largest |probability difference| on the golden samples."""


class ParityReport(_Strict):
    """The parity gate's result; the top-level numbers are onnxruntime's (as before both runtimes existed)."""

    rows: int
    label_mismatches: int
    max_abs_diff: float
    tolerance: float
    runtimes: list[RuntimeParity] | None = None
    """Each runtime's replay (onnxruntime and numpy); absent in bundles converted before the numpy runtime."""


class FeatureImportance(_Strict):
    feature: str
    """An original input feature (not a transformed column)."""
    mean: float
    """Mean drop of the metric over the repeats when this feature's values are shuffled."""
    std: float


class GlobalImportance(_Strict):
    """Permutation importance of each input feature on held-out rows (sklearn.inspection), most important first."""

    method: Literal["permutation"] = "permutation"
    metric: str
    """The score whose drop is measured: roc_auc (binary) or accuracy."""
    rows: int
    """Held-out rows used (capped to keep training fast)."""
    n_repeats: int
    random_state: int
    baseline: float
    """The metric on those rows before any shuffling."""
    features: list[FeatureImportance]


class NumericTerm(_Strict):
    """A numeric feature of a linear model: contribution = coef * (x - mean) / scale, x missing -> impute."""

    feature: str
    impute: float
    """The value a missing input takes (the training median)."""
    mean: float
    scale: float
    coef: list[float]
    """One coefficient per logit (one logit for a binary model, one per class otherwise)."""


class CategoricalTerm(_Strict):
    """A categorical feature of a linear model: contribution = coef[category] - average."""

    feature: str
    missing_as: str
    """The category a missing input ("" or null) becomes inside the pipeline."""
    coefs: dict[str, list[float]]
    """Coefficients per training category, one per logit; an unseen category has coefficients 0."""
    average: list[float]
    """Training-frequency-weighted average of the coefficients: the contribution of an average record."""


class LinearExplainer(_Strict):
    """Everything needed to compute a linear model's per-feature contributions to its logit with numpy only.

    logit[k] = base[k] + sum of the numeric and categorical contributions; base = intercept + sum of the
    categorical averages (numeric terms are centred on the training mean already).
    """

    kind: Literal["linear"] = "linear"
    link: Literal["logistic", "softmax"]
    """logistic: one logit, toward classes[1] (binary); softmax: one logit per class (multinomial)."""
    intercept: list[float]
    base: list[float]
    numeric: list[NumericTerm]
    categorical: list[CategoricalTerm]


class Manifest(_Strict):
    """The signed description of a bundle. Fields are append-only within `schema_version` v1."""

    schema_version: Literal["v1"] = "v1"
    name: str
    version: int
    created_at: str
    onnx: OnnxInfo
    inputs: list[FeatureSpec]
    target: str
    classes: list[ClassValue]
    reference_profile: dict[str, FeatureProfile]
    prediction_profile: dict[str, float] = Field(default_factory=dict)
    """Share of each predicted class on held-out data (reference for prediction drift); keys are str(class)."""
    golden_samples: list[GoldenSample]
    golden_tolerance: float = 1e-5
    parity: ParityReport
    lineage: Lineage
    rollback: bool = False
    """Set on a manifest re-signed to roll a device back to an older version on purpose."""
    importance: GlobalImportance | None = None
    """Global permutation importance from the trainer (absent in bundles made before it existed)."""
    explainer: LinearExplainer | None = None
    """Per-prediction explanations for linear models; absent for tree ensembles (not cheap or exact there)."""

    @property
    def feature_names(self) -> list[str]:
        return [spec.name for spec in self.inputs]

    @property
    def ref(self) -> str:
        return f"{self.name}/{self.version}"

    def to_json_bytes(self) -> bytes:
        return orjson.dumps(_plain(self), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)


_OMIT_WHEN_ABSENT = ("importance", "explainer")
"""Fields appended after bundles were already signed: left out of the JSON when None so that the signed
bytes of an older manifest (which never had them) are unchanged."""


def _plain(manifest: Manifest) -> dict:
    data = manifest.model_dump(mode="json")
    for key in _OMIT_WHEN_ABSENT:
        if data.get(key) is None:
            data.pop(key, None)
    if data["parity"].get("runtimes") is None:  # appended later too: older signed bytes stay unchanged
        data["parity"].pop("runtimes", None)
    return data


_LINEAR_ESTIMATORS = ("logreg", "LogisticRegression")


def why_no_explanation(manifest: Manifest) -> str:
    """Why a bundle without an `explainer` block has no per-prediction explanations, and what to read
    instead (one wording for the agent's /v1/explain and the cloud's dashboard)."""
    estimator = manifest.lineage.estimator
    if estimator in _LINEAR_ESTIMATORS:
        return (
            "converted before explanations existed: re-convert it with this edgeloop to get per-prediction "
            "contributions; meanwhile see the global permutation importance in the model card"
        )
    return (
        f"feature contributions are neither cheap nor exact for tree ensembles ({estimator}) on a device; the "
        "global permutation importance in the model card (`importance`) is what drives this model overall"
    )


def canonical_bytes(manifest: Manifest) -> bytes:
    """The exact bytes that are signed: compact JSON with sorted keys (stable across writers)."""
    return orjson.dumps(_plain(manifest), option=orjson.OPT_SORT_KEYS)


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
