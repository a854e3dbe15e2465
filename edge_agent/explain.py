"""Per-prediction explanations on the device, with numpy only (no scikit-learn): POST /v1/explain, `edgeloop explain`.

    explainer = Explainer.of(manifest)                  # reads the signed manifest's `explainer` block
    items = explain_records(model, records, top_k=5)    # prediction + top-k signed contributions per record

A linear model's logit is a sum of per-feature terms, so it splits exactly: a numeric feature contributes
coef * (x - mean) / scale (a missing value takes the training median first), a categorical one
coef[category] - average (the training-frequency-weighted average of its coefficients; an unseen category
has coefficient 0). base = intercept + the categorical averages, and base + every contribution = the logit.
Binary models explain the log-odds of classes[1]; multinomial ones the logit of the predicted class. Each
answer carries a check: the probability implied by base + contributions against the ONNX model's own
probability (they differ by float32 rounding, ~1e-7). Tree ensembles have no exact, cheap per-prediction
split (TreeSHAP is neither on a device), so for them the answer says so and points at the global
permutation importance from the model card, carried in the manifest.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from contracts.errors import InputError
from contracts.manifest import MISSING_CATEGORY, LinearExplainer, Manifest, why_no_explanation
from contracts.runtime import OnnxModel, encode_records

__all__ = ["CHECK_TOLERANCE", "Explainer", "explain_records", "parse_top_k", "unavailable_reason"]

CHECK_TOLERANCE = 1e-4
"""Largest |explained probability - ONNX probability| accepted by the check (float32 model vs float64 sums)."""


def unavailable_reason(manifest: Manifest) -> str:
    """One line saying why a bundle has no per-prediction explanations, and what to read instead."""
    return f"no per-prediction explanation for {manifest.ref}: {why_no_explanation(manifest)}"


@dataclass(frozen=True)
class _Categorical:
    feature: str
    missing_as: str
    index: dict[str, int]
    coefs: np.ndarray
    """(logits, categories + 1): the last column is an unseen category (coefficients 0)."""
    average: np.ndarray


class Explainer:
    """The manifest's linear explainer as numpy arrays; `contributions` splits each record's logits."""

    def __init__(self, block: LinearExplainer, classes: list[Any]) -> None:
        self.link = block.link
        self.classes = classes
        self.base = np.asarray(block.base, dtype=np.float64)
        self.numeric = [term.feature for term in block.numeric]
        self.impute = np.asarray([term.impute for term in block.numeric], dtype=np.float64)
        self.mean = np.asarray([term.mean for term in block.numeric], dtype=np.float64)
        self.scale = np.asarray([term.scale for term in block.numeric], dtype=np.float64)
        self.coef = np.asarray([term.coef for term in block.numeric], dtype=np.float64).reshape(
            len(block.numeric), len(block.base)
        )
        self.categorical = [
            _Categorical(
                feature=term.feature,
                missing_as=term.missing_as,
                index={category: j for j, category in enumerate(term.coefs)},
                coefs=np.column_stack([*(np.asarray(c) for c in term.coefs.values()), np.zeros(len(block.base))]),
                average=np.asarray(term.average, dtype=np.float64),
            )
            for term in block.categorical
        ]
        self.features = self.numeric + [term.feature for term in self.categorical]

    @classmethod
    def of(cls, manifest: Manifest) -> Explainer | None:
        return None if manifest.explainer is None else cls(manifest.explainer, list(manifest.classes))

    def contributions(self, records: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """(records, logits, features): each feature's signed contribution to each logit, float64."""
        rows = len(records)
        numeric = np.empty((rows, len(self.numeric)), dtype=np.float64)
        for j, name in enumerate(self.numeric):
            for i, record in enumerate(records):
                value = record.get(name)
                numeric[i, j] = math.nan if value is None else float(value)
        numeric = np.where(np.isnan(numeric), self.impute, numeric)
        out = np.empty((rows, len(self.base), len(self.features)), dtype=np.float64)
        out[:, :, : len(self.numeric)] = (((numeric - self.mean) / self.scale)[:, None, :]) * self.coef.T[None, :, :]
        for j, term in enumerate(self.categorical, start=len(self.numeric)):
            unseen = term.coefs.shape[1] - 1
            columns = []
            for record in records:
                value = record.get(term.feature)
                category = term.missing_as if value is None or value == MISSING_CATEGORY else str(value)
                columns.append(term.index.get(category, unseen))
            out[:, :, j] = term.coefs[:, columns].T - term.average
        return out

    def logits(self, contributions: np.ndarray) -> np.ndarray:
        return self.base + contributions.sum(axis=2)

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Class probabilities implied by the logits, columns in the order of the classes."""
        with np.errstate(over="ignore"):  # a huge logit saturates to 0 or 1
            if self.link == "logistic":
                positive = 1.0 / (1.0 + np.exp(-logits[:, 0]))
                return np.column_stack([1.0 - positive, positive])
            shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
            return shifted / shifted.sum(axis=1, keepdims=True)


def parse_top_k(raw: str | None, default: int, features: int) -> int:
    """The `top_k` query parameter: 1 to the number of features (a bigger value is capped), else a 422."""
    if raw is None:
        return max(1, min(default, features))
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 6 or int(raw) < 1:  # "²".isdigit() is True
        raise InputError(f"top_k must be a whole number of at least 1, got {raw[:20]!r}")
    return min(int(raw), features)


def _model_logit(link: str, probabilities: np.ndarray) -> float | None:
    """The ONNX model's log-odds of classes[1], recovered from its probabilities (binary only, finite only)."""
    if link != "logistic" or not 0.0 < probabilities[1] < 1.0:
        return None
    return float(np.log(probabilities[1]) - np.log(probabilities[0]))


def explain_records(model: OnnxModel, records: Sequence[Mapping[str, Any]], top_k: int) -> list[dict[str, Any]]:
    """Predict `records` with the ONNX model and explain each answer (SchemaError names a bad field).

    Every item: label, probabilities, `available`; with a linear explainer also the explained class
    (`toward`), base, logit, the top-k contributions by |contribution| (value as sent, contribution),
    the sum of the other contributions (`rest`) and the check against the model's own probability.
    """
    manifest = model.manifest
    feed = encode_records(records, manifest.inputs)
    result = model.predict_feed(feed)
    keys = [str(value) for value in manifest.classes]
    labels = result.labels.tolist()
    probabilities = result.probabilities.astype(np.float64)
    items: list[dict[str, Any]] = [
        {"label": label, "probabilities": dict(zip(keys, row, strict=True))}
        for label, row in zip(labels, probabilities.tolist(), strict=True)
    ]
    explainer = Explainer.of(manifest)
    if explainer is None:
        reason, importance = unavailable_reason(manifest), manifest.importance
        for item in items:
            item.update(available=False, reason=reason, importance=importance and importance.model_dump())
        return items
    contributions = explainer.contributions(records)
    logits = explainer.logits(contributions)
    implied = explainer.probabilities(logits)
    classes = list(manifest.classes)
    for row, item in enumerate(items):
        target = 0 if explainer.link == "logistic" else classes.index(labels[row])
        toward = classes[1] if explainer.link == "logistic" else labels[row]
        column = classes.index(toward)
        values = contributions[row, target]
        order = sorted(range(len(values)), key=lambda j: (-abs(values[j]), j))
        shown = order[:top_k]
        diff = abs(float(implied[row, column]) - float(probabilities[row, column]))
        item.update(
            available=True,
            method="linear",
            toward=toward,
            output="log-odds" if explainer.link == "logistic" else "logit",
            base=float(explainer.base[target]),
            logit=float(logits[row, target]),
            contributions=[
                {
                    "feature": explainer.features[j],
                    "value": records[row].get(explainer.features[j]),
                    "contribution": float(values[j]),
                }
                for j in shown
            ],
            rest=float(sum(values[j] for j in order[top_k:])),
            check={
                "base_plus_contributions": float(explainer.base[target] + values.sum()),
                "model_logit": _model_logit(explainer.link, probabilities[row]),
                "explained_probability": float(implied[row, column]),
                "model_probability": float(probabilities[row, column]),
                "abs_diff": diff,
                "tolerance": CHECK_TOLERANCE,
                "ok": diff <= CHECK_TOLERANCE,
            },
        )
    return items
