"""Held-out evaluation: accuracy, precision, recall, F1 and ROC AUC, for binary and multi-class targets.

Scores are always computed on rows the model never saw (the stratified held-out split).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

__all__ = ["evaluate"]


def evaluate(y_true: pd.Series, labels: np.ndarray, probabilities: np.ndarray, classes: list) -> dict[str, float]:
    binary = len(classes) == 2
    average = "binary" if binary else "macro"
    positive = classes[1] if binary else None
    kwargs = {"average": average, "zero_division": 0}
    if binary:
        kwargs["pos_label"] = positive
    metrics = {
        "accuracy": float(accuracy_score(y_true, labels)),
        "precision": float(precision_score(y_true, labels, **kwargs)),
        "recall": float(recall_score(y_true, labels, **kwargs)),
        "f1": float(f1_score(y_true, labels, **kwargs)),
    }
    try:
        if binary:
            metrics["roc_auc"] = float(roc_auc_score(y_true == positive, probabilities[:, 1]))
        else:
            metrics["roc_auc"] = float(
                roc_auc_score(y_true, probabilities, multi_class="ovr", average="macro", labels=classes)
            )
    except ValueError:
        metrics["roc_auc"] = float("nan")  # a class absent from the held-out rows
    return metrics
