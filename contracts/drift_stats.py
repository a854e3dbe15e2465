"""Evidence for drift that knows its sample size: a chi-square goodness-of-fit test of live counts against
the reference proportions, with sparse bins pooled, and multiple-testing control across features.

PSI and Jensen-Shannon (contracts/drift.py) measure how large a change is; they do not say whether the
counts are enough to believe it (a category expected at 6 % and absent from 40 records has PSI ~0.39, yet
2.4 records were expected). `goodness_of_fit` gives the p-value of the counts under the reference; a feature
is judged drifted when its effect is at least a minimum AND its p-value, adjusted across the features scored
together (Holm or Benjamini-Hochberg), is below the significance level (`drifted`).

No scipy (the edge agent does not install it): the chi-square survival function is the regularized upper
incomplete gamma Q(dof/2, x/2), by its series or continued fraction (Numerical Recipes 6.2).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = [
    "Correction",
    "DriftRule",
    "Evidence",
    "adjust_p_values",
    "chi2_sf",
    "drifted",
    "gamma_q",
    "goodness_of_fit",
    "pool_bins",
]

Correction = Literal["holm", "bh"]
_ITERATIONS = 1000
_TOLERANCE = 1e-15
_TINY = 1e-300


@dataclass(frozen=True)
class DriftRule:
    """When a feature counts as drifted: PSI >= `min_psi` and adjusted p-value < `alpha`."""

    alpha: float = 0.01
    """Significance level, after multiple-testing control across the features scored together."""
    min_psi: float = 0.25
    """Minimum effect: below this PSI nothing fires, however strong the evidence."""
    min_expected: float = 5.0
    """Bins (categories) expected to hold fewer records than this are pooled before the test."""
    correction: Correction = "holm"
    """`holm` (family-wise error) or `bh` (Benjamini-Hochberg, false discovery rate)."""


@dataclass(frozen=True)
class Evidence:
    """Pearson's chi-square statistic of the pooled bins, its degrees of freedom and p-value."""

    statistic: float
    dof: int
    p_value: float
    bins: int
    """Bins left after pooling (dof + 1)."""


def gamma_q(a: float, x: float) -> float:
    """Regularized upper incomplete gamma Q(a, x) = Γ(a, x) / Γ(a), for a > 0 and x >= 0."""
    if a <= 0:
        raise ValueError("gamma_q needs a > 0")
    if x <= 0:
        return 1.0
    log_prefix = a * math.log(x) - x - math.lgamma(a)
    if x < a + 1:  # series for P(a, x); Q = 1 - P is not small here, so no precision is lost
        term = total = 1.0 / a
        denominator = a
        for _ in range(_ITERATIONS):
            denominator += 1
            term *= x / denominator
            total += term
            if abs(term) < abs(total) * _TOLERANCE:
                break
        return max(0.0, 1.0 - total * math.exp(log_prefix))
    b = x + 1 - a  # continued fraction for Q(a, x), modified Lentz
    c = 1.0 / _TINY
    d = 1.0 / b
    h = d
    for i in range(1, _ITERATIONS):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = _TINY if abs(d) < _TINY else d
        c = b + an / c
        c = _TINY if abs(c) < _TINY else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1) < _TOLERANCE:
            break
    return min(1.0, math.exp(log_prefix) * h)


def chi2_sf(statistic: float, dof: int) -> float:
    """P(X >= statistic) for X ~ chi-square with `dof` degrees of freedom (scipy.stats.chi2.sf)."""
    if dof < 1:
        raise ValueError("chi2_sf needs dof >= 1")
    return gamma_q(dof / 2, max(statistic, 0.0) / 2)


def pool_bins(
    expected: np.ndarray, observed: np.ndarray, *, min_expected: float, ordered: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Merge bins whose expected count is below `min_expected`.

    Ordered bins (numeric): neighbours merge left to right, a short tail joins the last bin. Unordered
    (categories): every sparse bin goes into one pool, which joins the smallest other bin if still sparse.
    """
    expected = np.asarray(expected, dtype=np.float64)
    observed = np.asarray(observed, dtype=np.float64)
    exp_out: list[float] = []
    obs_out: list[float] = []
    if ordered:
        run_e = run_o = 0.0
        for e, o in zip(expected, observed, strict=True):
            run_e, run_o = run_e + e, run_o + o
            if run_e >= min_expected:
                exp_out.append(run_e)
                obs_out.append(run_o)
                run_e = run_o = 0.0
        if run_e > 0 or run_o > 0:
            if exp_out:
                exp_out[-1] += run_e
                obs_out[-1] += run_o
            else:
                exp_out.append(run_e)
                obs_out.append(run_o)
        return np.asarray(exp_out), np.asarray(obs_out)
    sparse = expected < min_expected
    exp_out = [float(e) for e in expected[~sparse]]
    obs_out = [float(o) for o in observed[~sparse]]
    pool_e, pool_o = float(expected[sparse].sum()), float(observed[sparse].sum())
    if sparse.any():
        if pool_e < min_expected and exp_out:
            smallest = int(np.argmin(exp_out))
            exp_out[smallest] += pool_e
            obs_out[smallest] += pool_o
        else:
            exp_out.append(pool_e)
            obs_out.append(pool_o)
    return np.asarray(exp_out), np.asarray(obs_out)


def goodness_of_fit(
    proportions: np.ndarray,
    counts: np.ndarray,
    *,
    min_expected: float = 5.0,
    ordered: bool = False,
    reference_records: int | None = None,
) -> Evidence | None:
    """Chi-square test of `counts` against the reference `proportions` after pooling sparse bins.

    `reference_records`: the records the proportions were measured on, when they are a sample too (a
    device's baseline) rather than a training set taken as exact; the statistic is then scaled by
    n_ref / (n_ref + n), which turns it into the two-sample (homogeneity) chi-square to first order, so two
    samples of one distribution are not called different because the reference is noisy.
    None when fewer than two bins remain (too few records to test anything): no evidence, so no drift.
    """
    counts = np.asarray(counts, dtype=np.float64)
    proportions = np.asarray(proportions, dtype=np.float64)
    total = counts.sum()
    if total <= 0 or proportions.sum() <= 0:
        return None
    expected = proportions / proportions.sum() * total
    pooled_e, pooled_o = pool_bins(expected, counts, min_expected=min_expected, ordered=ordered)
    keep = pooled_e > 0
    if int(keep.sum()) < 2:
        return None
    if (pooled_o[~keep] > 0).any():  # records where the reference has none, and nothing to pool them with
        return Evidence(statistic=math.inf, dof=int(keep.sum()) - 1, p_value=0.0, bins=int(keep.sum()))
    e, o = pooled_e[keep], pooled_o[keep]
    statistic = float(np.sum((o - e) ** 2 / e))
    if reference_records:
        statistic *= reference_records / (reference_records + total)
    dof = e.size - 1
    return Evidence(statistic=statistic, dof=dof, p_value=chi2_sf(statistic, dof), bins=e.size)


def adjust_p_values(p_values: Mapping[str, float], method: Correction = "holm") -> dict[str, float]:
    """Adjusted p-values across a family of tests: Holm (family-wise error) or Benjamini-Hochberg (false
    discovery rate). Compare each to the significance level."""
    names = sorted(p_values, key=lambda name: p_values[name])
    m = len(names)
    adjusted: dict[str, float] = {}
    if method == "holm":
        running = 0.0
        for rank, name in enumerate(names):
            running = max(running, min(1.0, (m - rank) * p_values[name]))
            adjusted[name] = running
    else:
        running = 1.0
        for rank in range(m - 1, -1, -1):
            name = names[rank]
            running = min(running, m * p_values[name] / (rank + 1))
            adjusted[name] = min(1.0, running)
    return adjusted


def drifted(psi: float, adjusted_p: float | None, *, min_psi: float, alpha: float) -> bool:
    """Drift is a change at least `min_psi` large that the counts make unlikely by chance (p < alpha)."""
    return adjusted_p is not None and psi >= min_psi and adjusted_p < alpha
