"""The bundle manifest (contract v1): what a converted model is, how to feed it, and how to check it.

A bundle is a directory with `model.onnx`, `manifest.json` and `manifest.sig` (a detached Ed25519
signature over `canonical_bytes(manifest)`). The manifest pins the ONNX file by sha256 and size, so the
signature covers the model too.

Input convention: the ONNX graph has one input per feature, named after it, shape `[None, 1]`;
numeric features are float32 (missing = NaN), categorical features are strings (missing = "").
Outputs are plain tensors: `label` and `probabilities` (columns in the order of `classes`).
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
    "FeatureProfile",
    "FeatureSpec",
    "GoldenSample",
    "Lineage",
    "Manifest",
    "NumericProfile",
    "OnnxInfo",
    "ParityReport",
    "canonical_bytes",
    "sha256_file",
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


class ParityReport(_Strict):
    rows: int
    label_mismatches: int
    max_abs_diff: float
    tolerance: float


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

    @property
    def feature_names(self) -> list[str]:
        return [spec.name for spec in self.inputs]

    @property
    def ref(self) -> str:
        return f"{self.name}/{self.version}"

    def to_json_bytes(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json"), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)


def canonical_bytes(manifest: Manifest) -> bytes:
    """The exact bytes that are signed: compact JSON with sorted keys (stable across writers)."""
    return orjson.dumps(manifest.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
