"""The A/B decision's sequential test (cloud_sync/rollouts/sequential.py): its closed form against the mixture
integral it stands for, its false-decision rate under equal arms over many peeks (seeded simulation, beside a
fixed-sample z-test read at the same peeks, which does not keep its level), its power, the minimum sample and
a decision that stays once made."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cloud_sync.rollouts.sequential import SequentialRule, Tally, log_mixture_ratio, sequential_test
from contracts.telemetry import ArmCounts

RULE = SequentialRule(alpha=0.05, min_labels=100, mixture_sd=0.05)


def _simulate(
    champion: float, challenger: float, *, runs: int, peeks: int, per_peek: int, seed: int
) -> list[list[tuple[Tally, Tally]]]:
    rng = np.random.default_rng(seed)
    a = rng.binomial(per_peek, champion, size=(runs, peeks))
    b = rng.binomial(per_peek, challenger, size=(runs, peeks))
    return [
        [(Tally(per_peek, int(x)), Tally(per_peek, int(y))) for x, y in zip(a[run], b[run], strict=True)]
        for run in range(runs)
    ]


def test_the_closed_form_is_the_normal_mixture_likelihood_ratio() -> None:
    """Lambda = integral of N(d; theta, V) / N(d; 0, V) over theta ~ N(0, tau^2), computed numerically."""
    champion, challenger, tau = Tally(400, 340), Tally(380, 300), 0.05
    d = 300 / 380 - 340 / 400
    variance = champion.variance() + challenger.variance()
    theta = np.linspace(-1, 1, 400_001)
    ratio = np.exp((2 * d * theta - theta**2) / (2 * variance))
    prior = np.exp(-(theta**2) / (2 * tau**2)) / math.sqrt(2 * math.pi * tau**2)
    integral = float(np.sum(ratio * prior) * (theta[1] - theta[0]))
    assert log_mixture_ratio(champion, challenger, tau) == pytest.approx(math.log(integral), rel=1e-6)
    # The variance is smoothed: an arm with every answer right still has some.
    assert Tally(100, 100).variance() > 0 and Tally(0, 0).variance() > 0


def test_equal_arms_read_at_every_window_are_rarely_declared_different() -> None:
    """600 runs of two arms at 85 % accuracy read after every window (60 windows of 25 labels per arm): the
    test declares a difference in at most alpha of them; a fixed-sample z-test read at the same peeks does
    not keep its level (the reason for a sequential test)."""
    runs = _simulate(0.85, 0.85, runs=600, peeks=60, per_peek=25, seed=11)
    decided = sum(sequential_test(run, RULE).outcome != "not yet known" for run in runs)
    naive = 0
    for run in runs:
        a, b = Tally(), Tally()
        for part_a, part_b in run:
            a, b = a + part_a, b + part_b
            if min(a.labels, b.labels) < RULE.min_labels:
                continue
            pooled = (a.correct + b.correct) / (a.labels + b.labels)
            se = math.sqrt(pooled * (1 - pooled) * (1 / a.labels + 1 / b.labels))
            z = abs(b.correct / b.labels - a.correct / a.labels) / se
            if math.erfc(z / math.sqrt(2)) <= RULE.alpha:
                naive += 1
                break
    assert decided / len(runs) <= RULE.alpha, decided
    assert naive / len(runs) > 2 * RULE.alpha, naive


@pytest.mark.parametrize(("challenger", "outcome"), [(0.75, "worse"), (0.95, "better")])
def test_a_clear_difference_is_found_in_its_direction(challenger: float, outcome: str) -> None:
    runs = _simulate(0.85, challenger, runs=200, peeks=40, per_peek=25, seed=5)
    verdicts = [sequential_test(run, RULE) for run in runs]
    assert sum(v.outcome == outcome for v in verdicts) >= 0.95 * len(runs)
    assert all(v.outcome in (outcome, "not yet known") for v in verdicts)
    decided = [v for v in verdicts if v.decided_at]
    assert all(v.confidence >= 1 - RULE.alpha for v in decided)
    assert all(v.interval is not None and v.interval[0] <= challenger - 0.85 <= v.interval[1] for v in decided[:50])


def test_no_verdict_before_the_minimum_labels_on_each_arm() -> None:
    lopsided = [(Tally(200, 190), Tally(99, 40))]  # a huge gap, but 99 challenger labels
    verdict = sequential_test(lopsided, RULE)
    assert verdict.outcome == "not yet known" and verdict.p_value == 1.0
    assert "100 labels per arm needed" in verdict.summary
    assert sequential_test([*lopsided, (Tally(0, 0), Tally(1, 0))], RULE).outcome == "worse"


def test_the_first_crossing_decides_and_later_peeks_do_not_undo_it() -> None:
    worse = [(Tally(150, 135), Tally(150, 105))]  # 0.90 vs 0.70
    verdict = sequential_test([*worse, (Tally(600, 480), Tally(600, 540))], RULE)  # then the challenger recovers
    assert verdict.outcome == "worse" and verdict.decided_at == (150, 150)
    assert verdict.difference == pytest.approx(645 / 750 - 615 / 750)
    tie = sequential_test([(Tally(150, 135), Tally(150, 135))] * 4, RULE)
    assert tie.outcome == "not yet known" and tie.confidence < 1 - RULE.alpha and tie.decided_at is None


def test_an_arms_tally_counts_the_diagonal_of_its_confusion() -> None:
    arm = ArmCounts(confusion={"0": {"0": 70, "1": 5}, "1": {"0": 10, "1": 15}})
    assert Tally.of(arm) == Tally(100, 85)
    assert Tally.of(ArmCounts()) == Tally(0, 0)
