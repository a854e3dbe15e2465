"""The A/B decision: a sequential test on the arms' feedback accuracy that may be read at every window and
still keeps its error rate, and says "challenger better", "challenger worse" or "not yet known" with its
confidence.

Method: the mixture sequential probability ratio test (mSPRT) for a difference of two proportions, as in
Johari, Pekelis, Walsh, "Always valid inference: continuous monitoring of A/B tests" (Operations Research
2022; the test behind Optimizely's stats engine). With d = challenger accuracy - champion accuracy on the
labels so far and V its estimated variance (p_a(1-p_a)/n_a + p_b(1-p_b)/n_b), the likelihood ratio of
"d is drawn from N(0, tau^2)" against "d = 0" is, in closed form,

    Lambda = sqrt(V / (V + tau^2)) * exp(tau^2 d^2 / (2 V (V + tau^2)))

Under d = 0 Lambda is a martingale, so (Ville's inequality) P(Lambda ever reaches 1/alpha) <= alpha however
often it is read: the always-valid p-value is the running minimum of 1/Lambda over the peeks, and the first
peek where it drops below alpha decides, in the direction of d at that peek. The variance is estimated, so the
guarantee is asymptotic; `min_labels` per arm keeps the normal approximation honest (the seeded simulation in
tests/test_sequential.py measures the false-decision rate under equal arms over many peeks). The peeks are the
canary's telemetry windows in the order they ended, so the result is rebuilt from stored windows at every
tick and needs no state of its own. Pure Python (math only).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from contracts.telemetry import ArmCounts

__all__ = [
    "Outcome",
    "SequentialRule",
    "Tally",
    "Verdict",
    "log_mixture_ratio",
    "sequential_test",
]

Outcome = Literal["better", "worse", "not yet known"]


@dataclass(frozen=True)
class SequentialRule:
    """How the A/B test decides, and whether the controller acts on it."""

    alpha: float = 0.05
    """Largest chance of declaring a difference between two equally accurate arms, over every peek."""
    min_labels: int = 100
    """Feedback labels each arm needs before a peek may decide."""
    mixture_sd: float = 0.05
    """tau: the size of accuracy difference the test is tuned to find fastest (the mixing prior's sd)."""
    auto_decide: bool = False
    """Promote on "better" (after the soak) and roll back on "worse" without an operator."""


@dataclass(frozen=True)
class Tally:
    """Feedback on one arm: labels and how many of its answers they confirmed."""

    labels: int = 0
    correct: int = 0

    @classmethod
    def of(cls, arm: ArmCounts) -> Tally:
        correct = sum(row.get(actual, 0) for actual, row in arm.confusion.items())
        return cls(arm.feedback_count, correct)

    def __add__(self, other: Tally) -> Tally:
        return Tally(self.labels + other.labels, self.correct + other.correct)

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labels if self.labels else None

    def variance(self) -> float:
        """Variance of its accuracy estimate, with the rate smoothed ((k + 1/2) / (n + 1)) so that an arm
        with every answer right (or wrong) does not claim zero variance."""
        rate = (self.correct + 0.5) / (self.labels + 1)
        return rate * (1 - rate) / max(self.labels, 1)


@dataclass(frozen=True)
class Verdict:
    """What the test says about the challenger after the last peek."""

    outcome: Outcome
    confidence: float
    """1 - the always-valid p-value: how sure the test is that the arms' accuracies differ."""
    p_value: float
    champion: Tally
    challenger: Tally
    difference: float | None
    """Challenger accuracy - champion accuracy on every label so far (None without labels on both arms)."""
    interval: tuple[float, float] | None
    """Always-valid (1 - alpha) confidence interval of the difference at the last peek."""
    decided_at: tuple[int, int] | None
    """(champion labels, challenger labels) at the peek that decided, if one did."""
    rule: SequentialRule = field(default_factory=SequentialRule)

    @property
    def summary(self) -> str:
        """One line for status and the audit log."""
        champion, challenger = self.champion, self.challenger
        counts = (
            f"accuracy {_fmt(challenger.accuracy)} on {challenger.labels} labels vs {_fmt(champion.accuracy)} on "
            f"{champion.labels}"
        )
        if self.outcome == "not yet known":
            need = self.rule.min_labels
            short = f", {need} labels per arm needed" if min(champion.labels, challenger.labels) < need else ""
            return f"not yet known ({counts}, confidence {_percent(self.confidence)}{short})"
        confidence = _percent(self.confidence)
        return f"challenger {self.outcome}: {counts}, confidence {confidence} (mSPRT, alpha {self.rule.alpha:g})"

    def as_report(self) -> dict[str, Any]:
        """The `decision` block of an A/B rollout's status and audit details."""
        return {
            "verdict": self.outcome,
            "confidence": self.confidence,
            "p_value": self.p_value,
            "difference": self.difference,
            "interval": list(self.interval) if self.interval else None,
            "champion_labels": self.champion.labels,
            "challenger_labels": self.challenger.labels,
            "decided_at_labels": list(self.decided_at) if self.decided_at else None,
            "method": "mSPRT",
            "alpha": self.rule.alpha,
            "min_labels": self.rule.min_labels,
            "auto_decide": self.rule.auto_decide,
            "summary": self.summary,
        }


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _percent(confidence: float) -> str:
    """A confidence as a percentage that never rounds up to a certainty it does not have."""
    return "> 99.9%" if confidence > 0.999 else f"{math.floor(confidence * 1000) / 10:.1f}%"


def log_mixture_ratio(champion: Tally, challenger: Tally, mixture_sd: float) -> float:
    """log Lambda of the module doc for the labels so far (0 when either arm has none)."""
    if not champion.labels or not challenger.labels:
        return 0.0
    difference = challenger.correct / challenger.labels - champion.correct / champion.labels
    variance = champion.variance() + challenger.variance()
    tau2 = mixture_sd**2
    return 0.5 * math.log(variance / (variance + tau2)) + tau2 * difference**2 / (2 * variance * (variance + tau2))


def _interval(champion: Tally, challenger: Tally, rule: SequentialRule) -> tuple[float, float] | None:
    """The differences the test would not reject at this peek: d +- sqrt(V(V+tau^2)/tau^2 (log((V+tau^2)/V)
    - 2 log alpha))."""
    if not champion.labels or not challenger.labels:
        return None
    difference = challenger.correct / challenger.labels - champion.correct / champion.labels
    variance, tau2 = champion.variance() + challenger.variance(), rule.mixture_sd**2
    half = math.sqrt(
        variance * (variance + tau2) / tau2 * (math.log((variance + tau2) / variance) - 2 * math.log(rule.alpha))
    )
    return difference - half, difference + half


def sequential_test(peeks: Iterable[tuple[Tally, Tally]], rule: SequentialRule) -> Verdict:
    """Run the test over `peeks`, each the (champion, challenger) labels that arrived since the previous
    peek (a telemetry window), in order. The first peek with at least `min_labels` on both arms whose
    always-valid p-value falls to `alpha` or below decides; later peeks only lower the p-value."""
    champion, challenger = Tally(), Tally()
    p_value, decided_at = 1.0, None
    outcome: Outcome = "not yet known"
    for champion_part, challenger_part in peeks:
        champion, challenger = champion + champion_part, challenger + challenger_part
        if min(champion.labels, challenger.labels) < rule.min_labels:
            continue
        p_value = min(p_value, math.exp(-max(log_mixture_ratio(champion, challenger, rule.mixture_sd), 0.0)))
        if decided_at is None and p_value <= rule.alpha:
            ahead = challenger.correct * champion.labels > champion.correct * challenger.labels
            outcome = "better" if ahead else "worse"
            decided_at = (champion.labels, challenger.labels)
    both = champion.labels and challenger.labels
    difference = (challenger.correct / challenger.labels - champion.correct / champion.labels) if both else None
    return Verdict(
        outcome=outcome,
        confidence=1.0 - p_value,
        p_value=p_value,
        champion=champion,
        challenger=challenger,
        difference=difference,
        interval=_interval(champion, challenger, rule),
        decided_at=decided_at,
        rule=rule,
    )
