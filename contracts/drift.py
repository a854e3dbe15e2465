"""Reference profiles and drift scores, shared by the trainer (which builds profiles) and the edge agent
and cloud (which count live data on the same bins and score the difference).

Bins: a numeric profile has inner edges e0 < e1 < ... < ek; value x falls in bin
`searchsorted(edges, x, side="left")`, i.e. (-inf, e0], (e0, e1], ..., (ek, inf): len(edges) + 1 bins.
Values are compared as float32, as the ONNX model sees them. Missing values are counted apart.

PSI bands (the usual ones): < 0.1 stable, 0.1-0.25 moderate, > 0.25 significant.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from contracts.manifest import CategoricalProfile, NumericProfile

__all__ = [
    "UNSEEN",
    "bin_counts",
    "categorical_profile",
    "js_distance",
    "numeric_profile",
    "psi",
    "psi_band",
]

UNSEEN = "__unseen__"
_EPS = 1e-4


def numeric_profile(values: np.ndarray, bins: int = 10) -> NumericProfile:
    """Quantile bins of the non-missing values (deduplicated edges, so constant columns get one bin)."""
    values = np.asarray(values, dtype=np.float64)
    present = values[~np.isnan(values)]
    if present.size == 0:
        raise ValueError("cannot profile a column with no values")
    quantiles = np.quantile(present, np.linspace(0, 1, bins + 1)[1:-1])
    edges = np.unique(quantiles.astype(np.float32)).astype(np.float64)
    counts = np.bincount(np.searchsorted(edges, present.astype(np.float32), side="left"), minlength=edges.size + 1)
    return NumericProfile(
        bin_edges=[float(edge) for edge in edges],
        proportions=[float(c) for c in counts / counts.sum()],
        missing_rate=float(1 - present.size / values.size),
        minimum=float(present.min()),
        maximum=float(present.max()),
        mean=float(present.mean()),
        std=float(present.std()),
    )


def categorical_profile(values: Sequence[str | None], missing: str = "") -> CategoricalProfile:
    present = [value for value in values if value is not None and value != missing]
    total = len(values)
    if not present:
        raise ValueError("cannot profile a column with no values")
    unique, counts = np.unique(np.asarray(present, dtype=str), return_counts=True)
    return CategoricalProfile(
        frequencies={str(u): float(c / len(present)) for u, c in zip(unique, counts, strict=True)},
        missing_rate=float(1 - len(present) / total),
    )


def bin_counts(edges: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, int]:
    """Counts per bin of the non-missing values, and the number of missing ones (vectorised)."""
    values = np.asarray(values, dtype=np.float32).reshape(-1)
    missing = np.isnan(values)
    index = np.searchsorted(edges.astype(np.float32), values[~missing], side="left")
    return np.bincount(index, minlength=edges.size + 1), int(missing.sum())


def _normalise(counts: np.ndarray) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        return np.full(counts.shape, 1.0 / max(counts.size, 1))
    return counts / total


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index between two distributions (proportions or counts), with a floor of 1e-4."""
    p = np.clip(_normalise(expected), _EPS, None)
    q = np.clip(_normalise(actual), _EPS, None)
    return float(np.sum((q - p) * np.log(q / p)))


def js_distance(expected: np.ndarray, actual: np.ndarray) -> float:
    """Jensen-Shannon distance (base 2, in [0, 1]) between two distributions."""
    p, q = _normalise(expected), _normalise(actual)
    m = (p + q) / 2

    def kl(a: np.ndarray, b: np.ndarray) -> float:
        mask = a > 0
        return float(np.sum(a[mask] * np.log2(a[mask] / b[mask])))

    return float(np.sqrt(max(0.0, (kl(p, m) + kl(q, m)) / 2)))


def psi_band(value: float, moderate: float = 0.1, significant: float = 0.25) -> str:
    if value > significant:
        return "significant"
    if value >= moderate:
        return "moderate"
    return "stable"
