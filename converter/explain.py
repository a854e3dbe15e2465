"""What the edge agent needs to explain a linear model's predictions, read from the fitted sklearn pipeline.

    explainer = linear_explainer(sklearn_model, inputs, reference_profile)   # None unless logistic regression

For the trainer's logistic-regression pipeline (numeric: imputation + StandardScaler; categorical: constant
imputation + one-hot) the logit is exactly a sum of per-feature terms:

    logit[k] = intercept[k] + sum_numeric coef[k] * (x - mean) / scale + sum_categorical coef[k][category]

The manifest gets, per numeric feature, the imputation value, mean, scale and coefficients; per categorical
feature the coefficient of each training category and their training-frequency-weighted average (from the
reference profile), so contributions are relative to an average record; plus the intercept and the base
(intercept + the categorical averages). Any other estimator, or a preprocessing step this module does not
know, gets no explainer (None) rather than a wrong one; tree ensembles rely on the permutation importance.
`check_explainer` recomputes the logits from the manifest block with pandas/numpy and compares them with
sklearn's decision_function on held-out rows: an explainer that does not add up is left out of the bundle.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from contracts.logs import log_event
from contracts.manifest import MISSING_CATEGORY, CategoricalTerm, FeatureSpec, LinearExplainer, NumericTerm

__all__ = ["check_explainer", "checked_explainer", "linear_explainer"]

logger = logging.getLogger("edgeloop.converter")
_TOLERANCE = 1e-6


def _names(steps: object) -> list[str]:
    return [type(step).__name__ for _, step in getattr(steps, "steps", [])]


def _numeric_terms(pipe: object, columns: list[str], coef: np.ndarray) -> list[NumericTerm] | None:
    if _names(pipe) != ["SimpleImputer", "StandardScaler"]:
        return None
    imputer, scaler = pipe.steps[0][1], pipe.steps[1][1]  # type: ignore[attr-defined]
    if imputer.add_indicator or not (scaler.with_mean and scaler.with_std):
        return None
    if len(imputer.statistics_) != len(columns) or coef.shape[1] != len(columns):
        return None  # an all-missing column was dropped by the imputer
    return [
        NumericTerm(
            feature=name,
            impute=float(imputer.statistics_[i]),
            mean=float(scaler.mean_[i]),
            scale=float(scaler.scale_[i]),
            coef=[float(value) for value in coef[:, i]],
        )
        for i, name in enumerate(columns)
    ]


def _categorical_terms(
    pipe: object, columns: list[str], coef: np.ndarray, profile: dict
) -> list[CategoricalTerm] | None:
    if _names(pipe) != ["SimpleImputer", "OneHotEncoder"]:
        return None
    imputer, encoder = pipe.steps[0][1], pipe.steps[1][1]  # type: ignore[attr-defined]
    if imputer.strategy != "constant" or imputer.missing_values != MISSING_CATEGORY or imputer.add_indicator:
        return None
    if encoder.drop_idx_ is not None or getattr(encoder, "_infrequent_enabled", False):
        return None
    terms, offset = [], 0
    for i, name in enumerate(columns):
        categories = [str(value) for value in encoder.categories_[i]]
        block = coef[:, offset : offset + len(categories)]
        offset += len(categories)
        stats = profile.get(name) or {}
        missing_rate = float(stats.get("missing_rate", 0.0))
        frequencies = stats.get("frequencies", {})
        fill = str(imputer.fill_value)
        weights = np.array(
            [
                missing_rate if cat == fill else float(frequencies.get(cat, 0.0)) * (1 - missing_rate)
                for cat in categories
            ]
        )
        weights = weights / weights.sum() if weights.sum() > 0 else np.full(len(categories), 1 / len(categories))
        terms.append(
            CategoricalTerm(
                feature=name,
                missing_as=fill,
                coefs={cat: [float(v) for v in block[:, j]] for j, cat in enumerate(categories)},
                average=[float(v) for v in block @ weights],
            )
        )
    return terms if offset == coef.shape[1] else None


def linear_explainer(model: object, inputs: list[FeatureSpec], profile: dict) -> LinearExplainer | None:
    """The explainer block for a logistic-regression pipeline; None for anything else (with the reason logged)."""
    steps = getattr(model, "steps", None)
    if not steps or len(steps) != 2 or type(steps[1][1]).__name__ != "LogisticRegression":
        return None
    preprocess, estimator = steps[0][1], steps[1][1]
    if type(preprocess).__name__ != "ColumnTransformer" or getattr(estimator, "multi_class", "auto") == "ovr":
        return _unsupported("not the trainer's ColumnTransformer + multinomial/binary logistic regression")
    coef = np.asarray(estimator.coef_, dtype=np.float64)
    numeric: list[NumericTerm] = []
    categorical: list[CategoricalTerm] = []
    kinds = {spec.name: spec.kind for spec in inputs}
    for name, pipe, columns in preprocess.transformers_:
        if (isinstance(pipe, str) and pipe == "drop") or not len(columns):
            continue
        block = coef[:, preprocess.output_indices_[name]]
        if all(kinds.get(column) == "numeric" for column in columns):
            terms: list | None = _numeric_terms(pipe, list(columns), block)
            numeric.extend(terms or [])
        elif all(kinds.get(column) == "categorical" for column in columns):
            terms = _categorical_terms(pipe, list(columns), block, profile)
            categorical.extend(terms or [])
        else:
            terms = None
        if terms is None:
            return _unsupported(f"transformer '{name}' ({', '.join(_names(pipe)) or type(pipe).__name__})")
    covered = {term.feature for term in numeric} | {term.feature for term in categorical}
    if covered != {spec.name for spec in inputs}:
        return _unsupported("some inputs are not in the linear model")
    intercept = [float(v) for v in np.asarray(estimator.intercept_, dtype=np.float64)]
    base = np.asarray(intercept) + sum((np.asarray(term.average) for term in categorical), np.zeros(len(intercept)))
    return LinearExplainer(
        link="logistic" if coef.shape[0] == 1 else "softmax",
        intercept=intercept,
        base=[float(v) for v in base],
        numeric=numeric,
        categorical=categorical,
    )


def _unsupported(reason: str) -> LinearExplainer | None:
    log_event(logger, "no explainer", level=logging.WARNING, reason=reason)
    return None


def check_explainer(explainer: LinearExplainer, model: object, features: pd.DataFrame) -> float:
    """Max |logit from the manifest block - sklearn's decision_function| over `features` (held-out rows)."""
    logits = np.tile(np.asarray(explainer.intercept), (len(features), 1))
    for num in explainer.numeric:
        values = pd.to_numeric(features[num.feature], errors="coerce").astype(float).fillna(num.impute).to_numpy()
        logits += np.outer((values - num.mean) / num.scale, num.coef)
    for cat in explainer.categorical:
        zero = [0.0] * len(explainer.intercept)
        column = features[cat.feature].fillna(MISSING_CATEGORY).astype(str).replace(MISSING_CATEGORY, cat.missing_as)
        logits += np.array([cat.coefs.get(value, zero) for value in column])
    expected = np.asarray(model.decision_function(features), dtype=np.float64)  # type: ignore[attr-defined]
    return float(np.max(np.abs(logits - expected.reshape(len(features), -1)))) if len(features) else 0.0


def checked_explainer(
    model: object, inputs: list[FeatureSpec], profile: dict, holdout: pd.DataFrame
) -> LinearExplainer | None:
    """linear_explainer, kept only if it reproduces sklearn's logits on the held-out rows (within 1e-6)."""
    explainer = linear_explainer(model, inputs, profile)
    if explainer is None:
        return None
    worst = check_explainer(explainer, model, holdout)
    if not worst <= _TOLERANCE:
        log_event(logger, "explainer left out", level=logging.WARNING, max_abs_logit_diff=f"{worst:.2e}")
        return None
    log_event(logger, "explainer checked", rows=len(holdout), max_abs_logit_diff=f"{worst:.2e}")
    return explainer
