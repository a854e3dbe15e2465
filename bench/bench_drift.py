"""What the drift decision's evidence costs: CPU microseconds per telemetry window (9 features of the demo's
machines data) for PSI + Jensen-Shannon alone (the score before issue 18, the same-run baseline) and for PSI +
JS + the chi-square test with pooling + Holm (`contracts.drift_stats`, what `score_drift` does now).

    .venv/bin/python bench/bench_drift.py [--rounds 7] [--windows 2000]

The agent scores once per window (60 s by default) and the cloud once per merged subject per alert tick, so
what matters is that the figure stays far below a millisecond. Interleaved rounds, median of
`time.process_time` (a shared machine disturbs CPU time much less than wall time). Not a test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from contracts.drift import bin_counts, categorical_profile, js_distance, numeric_profile, psi  # noqa: E402
from contracts.drift_stats import adjust_p_values, goodness_of_fit  # noqa: E402
from trainer.sample_data import make_machines  # noqa: E402

NUMERIC = ["temperature_c", "vibration_mm_s", "pressure_bar", "rpm", "power_kw", "hours_since_service"]
CATEGORICAL = ["machine_type", "firmware", "site"]
Pair = tuple[np.ndarray, np.ndarray, bool]  # reference proportions, counts, ordered


def _pairs(records: int, seed: int) -> list[Pair]:
    train, live = make_machines(6000, seed=7), make_machines(records, seed=seed)
    pairs: list[Pair] = []
    for name in NUMERIC:
        profile = numeric_profile(train[name].to_numpy(dtype=float))
        counts, _ = bin_counts(np.asarray(profile.bin_edges), live[name].to_numpy(dtype=float))
        pairs.append((np.asarray(profile.proportions), counts.astype(np.float64), True))
    for name in CATEGORICAL:
        cat = categorical_profile(list(train[name].where(train[name].notna(), None)))
        keys = list(cat.frequencies)
        observed = live[name].value_counts()
        counts = np.asarray([observed.get(key, 0) for key in keys], dtype=np.float64)
        pairs.append((np.asarray([cat.frequencies[key] for key in keys]), counts, False))
    return pairs


def effect_only(pairs: list[Pair]) -> None:
    for expected, actual, _ in pairs:
        psi(expected, actual)
        js_distance(expected, actual)


def effect_and_evidence(pairs: list[Pair]) -> None:
    p_values = {}
    for index, (expected, actual, ordered) in enumerate(pairs):
        psi(expected, actual)
        js_distance(expected, actual)
        evidence = goodness_of_fit(expected, actual, ordered=ordered)
        if evidence is not None:
            p_values[str(index)] = evidence.p_value
    adjust_p_values(p_values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--windows", type=int, default=2000)
    args = parser.parse_args()
    variants: dict[str, Callable[[list[Pair]], None]] = {
        "PSI + JS (baseline)": effect_only,
        "PSI + JS + chi-square + Holm": effect_and_evidence,
    }
    table = Table(title=f"CPU µs per window (9 features), median of {args.rounds} rounds of {args.windows}")
    table.add_column("variant")
    for records in (40, 1000):
        table.add_column(f"{records} records")
    results: dict[str, list[float]] = {name: [] for name in variants}
    for records in (40, 1000):
        pairs = _pairs(records, seed=11)
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name, run in variants.items():
                start = time.process_time()
                for _ in range(args.windows):
                    run(pairs)
                times[name].append((time.process_time() - start) / args.windows * 1e6)
        for name in variants:
            results[name].append(statistics.median(times[name]))
    for name, values in results.items():
        table.add_row(name, *(f"{value:.0f}" for value in values))
    Console().print(table)


if __name__ == "__main__":
    main()
