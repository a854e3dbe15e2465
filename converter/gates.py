"""The metric gate of `edgeloop convert`: refuse to build a bundle for a model whose held-out metrics miss a floor.

    check_metric_floors({"roc_auc": 0.91, "f1": 0.7}, parse_metric_floors(["roc_auc=0.8"]))   # passes

The metrics are the ones `edgeloop train` logged on the run (`holdout_<name>`: accuracy, precision, recall, f1,
roc_auc), measured on the held-out split. A floor names a metric and the lowest value accepted; a metric the
run does not have, or that is NaN (e.g. ROC AUC with a class absent from the held-out rows), fails the gate.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from contracts.errors import ConversionError, InputError

__all__ = ["check_metric_floors", "parse_metric_floors"]


def parse_metric_floors(specs: Iterable[str]) -> dict[str, float]:
    """`["roc_auc=0.8", "f1=0.6"]` -> `{"roc_auc": 0.8, "f1": 0.6}`; a malformed spec is an InputError."""
    floors: dict[str, float] = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        name = name.strip()
        try:
            floor = float(value) if sep and name else math.nan
        except ValueError:
            floor = math.nan
        if math.isnan(floor) or math.isinf(floor):
            raise InputError(f"--min-metric {spec!r}: expected NAME=NUMBER, e.g. roc_auc=0.8")
        floors[name] = floor
    return floors


def check_metric_floors(metrics: Mapping[str, float], floors: Mapping[str, float]) -> None:
    """Raise ConversionError naming every metric below its floor (or absent); return quietly otherwise."""
    misses = []
    for name, floor in sorted(floors.items()):
        value = metrics.get(name)
        if value is None:
            known = ", ".join(sorted(metrics)) or "none"
            misses.append(f"{name} is not a held-out metric of this run (it has: {known})")
        elif math.isnan(value):
            misses.append(f"{name} is NaN on the held-out rows, below the floor {floor:g}")
        elif value < floor:
            misses.append(f"{name} {value:.4f} < {floor:g}")
    if misses:
        raise ConversionError(f"metric gate failed: {'; '.join(misses)}; no bundle written")
