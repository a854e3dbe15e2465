"""The scikit-learn pipeline the trainer fits: a ColumnTransformer (impute + scale numeric; impute +
one-hot categorical, unknown categories ignored) followed by one of three estimator families.

Tree models get no scaler: they do not need one, and it keeps ONNX parity exact. sklearn's trees compare
float32 features, as the ONNX model does, while a float64 scaler in front would move a few values across
a split threshold after the float32 cast. GradientBoostingClassifier is the boosting family here, not
HistGradientBoosting: HGB bins its input in float64 (the same threshold problem) and skl2onnx 1.20 fails
to convert it under protobuf 7.
"""

from __future__ import annotations

from sklearn.compose import ColumnTransformer
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from contracts.errors import InputError
from contracts.manifest import MISSING_CATEGORY

__all__ = ["ESTIMATORS", "MISSING_FILL", "build_pipeline"]

ESTIMATORS = ("logreg", "rf", "gb")
MISSING_FILL = "__missing__"
"""What a missing category becomes inside the pipeline; not "missing", which real data uses as a value."""


def _estimator(kind: str, seed: int) -> object:
    if kind == "logreg":
        return LogisticRegression(max_iter=2000, C=1.0)
    if kind == "rf":
        return RandomForestClassifier(n_estimators=100, max_depth=10, n_jobs=-1, random_state=seed)
    if kind == "gb":
        return GradientBoostingClassifier(n_estimators=100, max_depth=3, random_state=seed)
    raise InputError(f"unknown model family '{kind}'; choose one of {', '.join(ESTIMATORS)}")


def build_pipeline(kind: str, numeric: list[str], categorical: list[str], seed: int = 42) -> Pipeline:
    estimator = _estimator(kind, seed)
    numeric_steps: list[tuple[str, object]] = [("impute", SimpleImputer(strategy="median"))]
    if kind == "logreg":
        numeric_steps.append(("scale", StandardScaler()))
    transformers: list[tuple[str, object, list[str]]] = []
    if numeric:
        transformers.append(("numeric", Pipeline(numeric_steps), numeric))
    if categorical:
        categorical_steps = Pipeline(
            [
                (
                    "impute",
                    SimpleImputer(strategy="constant", missing_values=MISSING_CATEGORY, fill_value=MISSING_FILL),
                ),
                ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
            ]
        )
        transformers.append(("categorical", categorical_steps, categorical))
    preprocess = ColumnTransformer(transformers, remainder="drop")
    return Pipeline([("preprocess", preprocess), ("model", estimator)])
