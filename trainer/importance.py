"""Global permutation importance of each original input feature, on held-out rows.

    importance = permutation_importance_of(pipeline, test_x, test_y, classes, seed=42)

sklearn.inspection.permutation_importance runs on the whole pipeline, so each input column (not each
one-hot or scaled column) is shuffled as a unit and the drop of the held-out metric is its importance:
roc_auc for a binary target, accuracy otherwise. Rows are capped and repeats fixed so that `edgeloop
train` stays fast; the seed makes it reproducible. It is model-agnostic, so it is what the model card and
the manifest offer for tree ensembles, whose per-prediction contributions are not cheap or exact.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pandas as pd
from sklearn.inspection import permutation_importance

from contracts.logs import log_event
from contracts.manifest import FeatureImportance, GlobalImportance

__all__ = ["MAX_ROWS", "N_REPEATS", "permutation_importance_of"]

logger = logging.getLogger("edgeloop.trainer")
MAX_ROWS = 2000
N_REPEATS = 5


def permutation_importance_of(
    pipeline: object,
    test_x: pd.DataFrame,
    test_y: pd.Series,
    classes: list,
    seed: int,
    max_rows: int = MAX_ROWS,
    n_repeats: int = N_REPEATS,
) -> GlobalImportance:
    """Importance per input feature, most important first (ties keep the input order)."""
    if len(test_x) > max_rows:
        test_x = test_x.sample(n=max_rows, random_state=seed)
        test_y = test_y.loc[test_x.index]
    # ROC AUC needs both classes among the rows; a single-class sample falls back to accuracy.
    metric = "roc_auc" if len(classes) == 2 and test_y.nunique() == 2 else "accuracy"
    started = time.perf_counter()
    result = permutation_importance(
        pipeline, test_x, test_y, scoring=metric, n_repeats=n_repeats, random_state=seed, n_jobs=1
    )
    baseline = _score(pipeline, test_x, test_y, metric)
    order = sorted(range(len(test_x.columns)), key=lambda i: -float(result.importances_mean[i]))
    features = [
        FeatureImportance(
            feature=str(test_x.columns[i]),
            mean=float(result.importances_mean[i]),
            std=float(result.importances_std[i]),
        )
        for i in order
    ]
    seconds = time.perf_counter() - started
    log_event(logger, "permutation importance", metric=metric, rows=len(test_x), seconds=round(seconds, 2))
    return GlobalImportance(
        metric=metric, rows=len(test_x), n_repeats=n_repeats, random_state=seed, baseline=baseline, features=features
    )


def _score(pipeline: object, x: pd.DataFrame, y: pd.Series, metric: str) -> float:
    from sklearn.metrics import get_scorer

    return float(np.float64(get_scorer(metric)(pipeline, x, y)))
