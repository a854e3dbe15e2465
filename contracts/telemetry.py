"""Telemetry windows (contract v1): mergeable counts a device reports every window, and the drift scores
computed from them.

A window carries counts, not only finished scores, so the cloud can merge any set of windows (a period,
a group of devices) and recompute drift and accuracy exactly: `merge_counts` then `score_drift`.
`WindowCounter` is the device side: vectorised counting on the hot path (numpy `searchsorted` on the
manifest's precomputed bin edges, O(features) per batch), read out with `snapshot()`.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from contracts.drift import UNSEEN, js_distance, psi, psi_band
from contracts.drift_stats import DriftRule, Evidence, adjust_p_values, drifted, goodness_of_fit
from contracts.manifest import MISSING_CATEGORY, CategoricalProfile, Manifest, NumericProfile

__all__ = [
    "LATENCY_BUCKETS",
    "ArmCounts",
    "CategoricalCounts",
    "DriftScore",
    "NumericCounts",
    "Resources",
    "TelemetryWindow",
    "WindowCounter",
    "WindowCounts",
    "merge_counts",
    "score_drift",
]

LATENCY_BUCKETS: tuple[float, ...] = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
"""Upper bounds in seconds; one more bucket counts everything slower (+Inf)."""
_SMALL_BATCH = 16


class NumericCounts(BaseModel):
    model_config = ConfigDict(extra="ignore")
    kind: Literal["numeric"] = "numeric"
    bins: list[int]
    """Counts on the reference bins of the manifest's profile (len(bin_edges) + 1)."""
    missing: int = 0
    out_of_range: int = 0
    """Values below the training minimum or above the training maximum."""


class CategoricalCounts(BaseModel):
    model_config = ConfigDict(extra="ignore")
    kind: Literal["categorical"] = "categorical"
    counts: dict[str, int]
    """Counts per training category, plus `__unseen__` for categories never seen in training."""
    missing: int = 0


def _quantile(latency_counts: list[int], q: float) -> float | None:
    total = sum(latency_counts)
    if not total:
        return None
    rank, seen = q * total, 0
    for bound, count in zip((*LATENCY_BUCKETS, float("inf")), latency_counts, strict=True):
        seen += count
        if seen >= rank:
            return bound
    return float("inf")


def _accuracy(confusion: Mapping[str, Mapping[str, int]]) -> float | None:
    total = sum(sum(row.values()) for row in confusion.values())
    if not total:
        return None
    return sum(row.get(actual, 0) for actual, row in confusion.items()) / total


class ArmCounts(BaseModel):
    """One arm of an A/B split in a window: the requests routed to it, the records it answered, its failures,
    the time its model took and the feedback on its answers."""

    model_config = ConfigDict(extra="ignore")
    records: int = 0
    predicted: dict[str, int] = Field(default_factory=dict)
    confusion: dict[str, dict[str, int]] = Field(default_factory=dict)
    """Feedback on this arm's answers: confusion[actual][predicted] = count."""
    requests: int = 0
    """Requests with at least one record routed to this arm (failed ones included)."""
    errors: int = 0
    """Requests in which this arm's model failed (the challenger's records were then answered by the champion,
    and are counted as the champion's records)."""
    latency_counts: list[int] = Field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    """Time this arm's model took on its records of a request (the shared schema check excluded), per
    request, on the window's latency buckets."""
    latency_sum: float = 0.0

    @property
    def feedback_count(self) -> int:
        return sum(sum(row.values()) for row in self.confusion.values())

    @property
    def accuracy(self) -> float | None:
        return _accuracy(self.confusion)

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    def latency_quantile(self, q: float) -> float | None:
        return _quantile(self.latency_counts, q)


class WindowCounts(BaseModel):
    """The mergeable part of a window."""

    model_config = ConfigDict(extra="ignore")
    requests: int = 0
    records: int = 0
    errors: dict[str, int] = Field(default_factory=dict)
    latency_counts: list[int] = Field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0
    predicted: dict[str, int] = Field(default_factory=dict)
    features: dict[str, NumericCounts | CategoricalCounts] = Field(default_factory=dict)
    confusion: dict[str, dict[str, int]] = Field(default_factory=dict)
    """Feedback: confusion[actual][predicted] = count."""
    answered_by: dict[str, int] = Field(default_factory=dict)
    """Hybrid inference (only while it is on): records answered by `edge` (confident), `cloud` (the cloud
    scoring endpoint answered a low-confidence record) or `edge_fallback` (the cloud was slow or unreachable)."""
    shadow_agreement: dict[str, int] = Field(default_factory=dict)
    """Shadow challenger: records where it predicted the same label as the served model (`agree`) or not
    (`disagree`)."""
    shadow_confusion: dict[str, dict[str, int]] = Field(default_factory=dict)
    """Feedback on the shadow challenger's predictions: shadow_confusion[actual][predicted] = count."""
    arms: dict[str, ArmCounts] = Field(default_factory=dict)
    """A/B split (only while one runs): requests, records, predicted classes, failures, latency and feedback
    per arm (`champion`, `challenger`). The window's `requests` and latency count every request; its other
    counts (records, features, predicted, confusion) are the champion arm's traffic only."""

    @property
    def shadow_accuracy(self) -> float | None:
        return _accuracy(self.shadow_confusion)

    @property
    def feedback_count(self) -> int:
        return sum(sum(row.values()) for row in self.confusion.values())

    @property
    def accuracy(self) -> float | None:
        return _accuracy(self.confusion)

    def latency_quantile(self, q: float) -> float | None:
        """Upper bound of the bucket holding quantile q (as Prometheus' histogram_quantile, without interpolation)."""
        return _quantile(self.latency_counts, q)


class DriftScore(BaseModel):
    """Effect (PSI, JS) and evidence (chi-square on the counts) of one feature's drift; see contracts/drift_stats.py.
    The evidence fields are None from agents before them (judge on PSI alone there)."""

    psi: float
    js: float
    band: Literal["stable", "moderate", "significant"]
    count: int
    """Records counted (missing values apart)."""
    statistic: float | None = None
    """Pearson's chi-square of the counts against the reference, sparse bins pooled."""
    dof: int | None = None
    p_value: float | None = None
    """p-value of the counts under the reference; None when too few records to test."""
    p_adjusted: float | None = None
    """p_value adjusted across the features scored together (Holm or Benjamini-Hochberg)."""
    drifted: bool | None = None
    """PSI at least the minimum effect and p_adjusted below the significance level."""


class Resources(BaseModel):
    cpu_percent: float | None = None
    rss_bytes: int | None = None
    disk_free_bytes: int | None = None
    soc_temperature_c: float | None = None


class TelemetryWindow(WindowCounts):
    """Published at QoS 1 on edgeloop/v1/devices/{device}/telemetry; (device_id, epoch, seq) is unique."""

    schema_version: Literal["v1"] = "v1"
    device_id: str
    group: str
    seq: int
    epoch: int = 0
    """When the device's outbox was created (Unix ms): sequence numbers restart at 1 with a new state directory,
    so the cloud keys windows on (device_id, epoch, seq). 0 = an outbox from before epochs existed."""
    window_start: str
    window_end: str
    agent_version: str
    model_name: str | None = None
    model_version: int | None = None
    bundle_sha256: str | None = None
    drift: dict[str, DriftScore] = Field(default_factory=dict)
    prediction_drift: DriftScore | None = None
    accuracy_value: float | None = None
    feedback_total: int = 0
    resources: Resources = Field(default_factory=Resources)
    dropped_windows: int = 0
    """Windows dropped on this device since it started because the outbox was full (never silent)."""
    outbox_floor: int | None = None
    """End-to-end acknowledgement: the lowest telemetry seq the device still held when it wrote this window; every
    lower one is stored by the cloud or was dropped (counted in dropped_windows), so the cloud's watermark may
    pass a hole below it. None from agents before it."""
    unacknowledged: int | None = None
    """End-to-end acknowledgement: messages the broker acknowledged that the cloud had not yet acknowledged when
    the device wrote this window (this window excluded). None from agents before it."""
    unacknowledged_oldest_s: float | None = None
    """Age in seconds of the oldest of those messages when the device wrote this window; None when none."""
    shadow_model_version: int | None = None
    """Version (same model name) of the challenger running in shadow during this window, if any."""
    ab_model_version: int | None = None
    """Version (same model name) of the A/B challenger whose arm is counted in `arms`, if any."""


def _add(into: dict[str, int], key: str, value: int) -> None:
    into[key] = into.get(key, 0) + value


def _add_all(into: dict[str, int], counts: dict[str, int]) -> None:
    for key, value in counts.items():
        _add(into, key, value)


def _add_matrix(into: dict[str, dict[str, int]], matrix: dict[str, dict[str, int]]) -> None:
    """Sum a confusion-style matrix (matrix[actual][predicted] = count) into `into`."""
    for actual, row in matrix.items():
        _add_all(into.setdefault(actual, {}), row)


def _sum_lists(a: list[int], b: list[int]) -> list[int]:
    return [x + y for x, y in zip(a, b, strict=True)]


def merge_counts(windows: Iterable[WindowCounts]) -> WindowCounts:
    """Sum the counts of several windows (same model version for feature bins to line up)."""
    total = WindowCounts()
    for window in windows:
        total.requests += window.requests
        total.records += window.records
        total.latency_sum += window.latency_sum
        _add_all(total.errors, window.errors)
        total.latency_counts = _sum_lists(total.latency_counts, window.latency_counts)
        _add_all(total.predicted, window.predicted)
        _add_matrix(total.confusion, window.confusion)
        _add_all(total.answered_by, window.answered_by)
        _add_all(total.shadow_agreement, window.shadow_agreement)
        _add_matrix(total.shadow_confusion, window.shadow_confusion)
        for arm, part in window.arms.items():
            into = total.arms.setdefault(arm, ArmCounts())
            into.records += part.records
            into.requests += part.requests
            into.errors += part.errors
            into.latency_sum += part.latency_sum
            into.latency_counts = _sum_lists(into.latency_counts, part.latency_counts)
            _add_all(into.predicted, part.predicted)
            _add_matrix(into.confusion, part.confusion)
        for name, counts in window.features.items():
            current = total.features.get(name)
            if isinstance(counts, NumericCounts):
                if not isinstance(current, NumericCounts) or len(current.bins) != len(counts.bins):
                    total.features[name] = counts.model_copy(deep=True)
                    continue
                current.bins = _sum_lists(current.bins, counts.bins)
                current.missing += counts.missing
                current.out_of_range += counts.out_of_range
            else:
                if not isinstance(current, CategoricalCounts):
                    total.features[name] = counts.model_copy(deep=True)
                    continue
                _add_all(current.counts, counts.counts)
                current.missing += counts.missing
    return total


def _score(
    expected: np.ndarray,
    actual: np.ndarray,
    *,
    bands: tuple[float, float],
    min_expected: float,
    ordered: bool,
    reference_records: int | None = None,
) -> DriftScore:
    value = psi(expected, actual)
    evidence: Evidence | None = goodness_of_fit(
        expected, actual, min_expected=min_expected, ordered=ordered, reference_records=reference_records
    )
    return DriftScore(
        psi=value,
        js=js_distance(expected, actual),
        band=psi_band(value, *bands),  # type: ignore[arg-type]
        count=int(actual.sum()),
        statistic=None if evidence is None or not np.isfinite(evidence.statistic) else evidence.statistic,
        dof=None if evidence is None else evidence.dof,
        p_value=None if evidence is None else evidence.p_value,
    )


def score_drift(
    counts: WindowCounts,
    manifest: Manifest,
    moderate: float = 0.1,
    significant: float = 0.25,
    min_count: int = 1,
    *,
    rule: DriftRule = DriftRule(),
    reference_records: int | None = None,
) -> tuple[dict[str, DriftScore], DriftScore | None]:
    """PSI, Jensen-Shannon distance and chi-square evidence per feature and for the predicted classes, against
    the manifest. A feature is `drifted` when its PSI is at least `rule.min_psi` and its p-value, adjusted
    across the features (`rule.correction`), is below `rule.alpha`. `reference_records`: the manifest's
    profile is a sample of that many records (a device baseline), not a training set taken as exact."""
    scores: dict[str, DriftScore] = {}
    for name, observed in counts.features.items():
        reference = manifest.reference_profile.get(name)
        if isinstance(reference, NumericProfile) and isinstance(observed, NumericCounts):
            expected = np.asarray(reference.proportions)
            actual = np.asarray(observed.bins, dtype=np.float64)
        elif isinstance(reference, CategoricalProfile) and isinstance(observed, CategoricalCounts):
            keys = list(dict.fromkeys([*reference.frequencies, UNSEEN]))  # a device baseline may hold UNSEEN
            expected = np.asarray([reference.frequencies.get(key, 0.0) for key in keys])
            actual = np.asarray([observed.counts.get(key, 0) for key in keys], dtype=np.float64)
        else:
            continue
        if int(actual.sum()) < min_count or expected.size != actual.size:
            continue
        scores[name] = _score(
            expected,
            actual,
            bands=(moderate, significant),
            min_expected=rule.min_expected,
            ordered=isinstance(reference, NumericProfile),
            reference_records=reference_records,
        )
    tested = {name: score.p_value for name, score in scores.items() if score.p_value is not None}
    adjusted = adjust_p_values(tested, rule.correction)
    for name, score in scores.items():
        score.p_adjusted = adjusted.get(name)
        score.drifted = drifted(score.psi, score.p_adjusted, min_psi=rule.min_psi, alpha=rule.alpha)
    prediction = None
    if manifest.prediction_profile and sum(counts.predicted.values()) >= min_count:
        keys = list(manifest.prediction_profile)
        expected = np.asarray([manifest.prediction_profile[key] for key in keys])
        actual = np.asarray([counts.predicted.get(key, 0) for key in keys], dtype=np.float64)
        prediction = _score(
            expected,
            actual,
            bands=(moderate, significant),
            min_expected=rule.min_expected,
            ordered=False,
            reference_records=reference_records,
        )
        prediction.p_adjusted = prediction.p_value
        prediction.drifted = drifted(prediction.psi, prediction.p_value, min_psi=rule.min_psi, alpha=rule.alpha)
    return scores, prediction


class _ArmTally:
    """The running counts of one A/B arm in a WindowCounter (plain attributes: cheap on the hot path)."""

    __slots__ = ("confusion", "errors", "latency", "latency_sum", "predicted", "records", "requests")

    def __init__(self) -> None:
        self.records = self.requests = self.errors = 0
        self.latency = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self.predicted: dict[str, int] = {}
        self.confusion: dict[str, dict[str, int]] = {}


class WindowCounter:
    """Counts one window of traffic for a model; thread-safe; `snapshot()` returns and resets the counts.

    State is kept in numpy arrays and plain dicts (pydantic objects are built only at snapshot), so a
    single-record request costs a few microseconds per feature.
    """

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        self._lock = threading.Lock()
        self._numeric: list[tuple[str, np.ndarray, float, float]] = []
        self._categorical: list[tuple[str, frozenset[str]]] = []
        for spec in manifest.inputs:
            profile = manifest.reference_profile.get(spec.name)
            if isinstance(profile, NumericProfile):
                edges = np.asarray(profile.bin_edges, dtype=np.float32)
                self._numeric.append((spec.name, edges, profile.minimum, profile.maximum))
            elif isinstance(profile, CategoricalProfile):
                self._categorical.append((spec.name, frozenset(profile.frequencies)))
        self._edge_lists = {name: edges.tolist() for name, edges, _, _ in self._numeric}
        self._latency_bounds = list(LATENCY_BUCKETS)
        self._reset()

    def _reset(self) -> None:
        self._requests = 0
        self._records = 0
        self._errors: dict[str, int] = {}
        self._latency = [0] * (len(LATENCY_BUCKETS) + 1)
        self._latency_sum = 0.0
        self._predicted: dict[str, int] = {}
        self._bins = {name: np.zeros(edges.size + 1, dtype=np.int64) for name, edges, _, _ in self._numeric}
        self._missing = dict.fromkeys([name for name, *_ in self._numeric] + [n for n, _ in self._categorical], 0)
        self._out_of_range = dict.fromkeys([name for name, *_ in self._numeric], 0)
        self._categories: dict[str, dict[str, int]] = {name: {} for name, _ in self._categorical}
        self._confusion: dict[str, dict[str, int]] = {}
        self._answered: dict[str, int] = {}
        self._agreement: dict[str, int] = {}
        self._shadow_confusion: dict[str, dict[str, int]] = {}
        self._arms: dict[str, _ArmTally] = {}

    def observe(self, feed: Mapping[str, np.ndarray], labels: np.ndarray, seconds: float) -> None:
        """Count one request: its encoded inputs (the ONNX feed), predicted labels and latency."""
        with self._lock:
            self._requests += 1
            self._records += int(labels.size)
            self._latency[bisect.bisect_left(self._latency_bounds, seconds)] += 1
            self._latency_sum += seconds
            for label in labels.tolist():
                key = str(label)
                self._predicted[key] = self._predicted.get(key, 0) + 1
            for name, edges, low, high in self._numeric:
                values = feed[name].reshape(-1)
                if values.size <= _SMALL_BATCH:
                    self._count_small(name, values.tolist(), low, high)
                    continue
                missing = np.isnan(values)
                n_missing = int(missing.sum())
                present = values[~missing] if n_missing else values
                self._bins[name] += np.bincount(np.searchsorted(edges, present, side="left"), minlength=edges.size + 1)
                self._missing[name] += n_missing
                self._out_of_range[name] += int(np.count_nonzero((present < low) | (present > high)))
            for name, known in self._categorical:
                table = self._categories[name]
                for value in feed[name].reshape(-1).tolist():
                    if value == MISSING_CATEGORY:
                        self._missing[name] += 1
                    else:
                        key = value if value in known else UNSEEN
                        table[key] = table.get(key, 0) + 1

    def _count_small(self, name: str, values: list[float], low: float, high: float) -> None:
        # Plain Python beats numpy's per-call overhead for a handful of values; same bins (float32 edges).
        edges, bins = self._edge_lists[name], self._bins[name]
        for value in values:
            if value != value:  # NaN
                self._missing[name] += 1
                continue
            bins[bisect.bisect_left(edges, value)] += 1
            if value < low or value > high:
                self._out_of_range[name] += 1

    def observe_error(self, kind: str) -> None:
        with self._lock:
            self._errors[kind] = self._errors.get(kind, 0) + 1

    def observe_feedback(self, actual: Any, predicted: Any) -> None:
        with self._lock:
            row = self._confusion.setdefault(str(actual), {})
            row[str(predicted)] = row.get(str(predicted), 0) + 1

    def observe_answers(self, answered_by: Mapping[str, int]) -> None:
        """Hybrid inference: count records by who answered them (edge, cloud, edge_fallback)."""
        with self._lock:
            for key, value in answered_by.items():
                self._answered[key] = self._answered.get(key, 0) + value

    def observe_shadow(self, agree: int, disagree: int) -> None:
        """Shadow challenger: count records where it agreed or disagreed with the served model."""
        with self._lock:
            self._agreement["agree"] = self._agreement.get("agree", 0) + agree
            self._agreement["disagree"] = self._agreement.get("disagree", 0) + disagree

    def observe_shadow_feedback(self, actual: Any, predicted: Any) -> None:
        with self._lock:
            row = self._shadow_confusion.setdefault(str(actual), {})
            row[str(predicted)] = row.get(str(predicted), 0) + 1

    def _arm(self, arm: str) -> _ArmTally:
        found = self._arms.get(arm)
        if found is None:
            found = self._arms[arm] = _ArmTally()
        return found

    def observe_request(self, seconds: float) -> None:
        """Count a request none of whose records the window's own counts cover (an A/B challenger answered
        them all): its latency and the request itself."""
        with self._lock:
            self._requests += 1
            self._latency[bisect.bisect_left(self._latency_bounds, seconds)] += 1
            self._latency_sum += seconds

    def observe_arm(self, arm: str, labels: Iterable[Any], seconds: float | None = None) -> None:
        """A/B split: count the records an arm answered and their labels; with `seconds` (the time its model
        took), also one request of that arm."""
        with self._lock:
            tally = self._arm(arm)
            predicted = tally.predicted
            for label in labels:
                tally.records += 1
                predicted[str(label)] = predicted.get(str(label), 0) + 1
            if seconds is not None:
                tally.requests += 1
                tally.latency[bisect.bisect_left(self._latency_bounds, seconds)] += 1
                tally.latency_sum += seconds

    def observe_arm_error(self, arm: str) -> None:
        """A/B split: a request in which `arm`'s model failed (another arm answered its records)."""
        with self._lock:
            tally = self._arm(arm)
            tally.requests += 1
            tally.errors += 1

    def observe_arm_feedback(self, arm: str, actual: Any, predicted: Any) -> None:
        """A/B split: feedback on an answer of `arm`."""
        with self._lock:
            row = self._arm(arm).confusion.setdefault(str(actual), {})
            row[str(predicted)] = row.get(str(predicted), 0) + 1

    def snapshot(self) -> WindowCounts:
        """Return the counts since the last snapshot and start a new window."""
        with self._lock:
            features: dict[str, NumericCounts | CategoricalCounts] = {}
            for name, *_ in self._numeric:
                features[name] = NumericCounts(
                    bins=self._bins[name].tolist(), missing=self._missing[name], out_of_range=self._out_of_range[name]
                )
            for name, _ in self._categorical:
                features[name] = CategoricalCounts(counts=dict(self._categories[name]), missing=self._missing[name])
            counts = WindowCounts(
                requests=self._requests,
                records=self._records,
                errors=dict(self._errors),
                latency_counts=list(self._latency),
                latency_sum=self._latency_sum,
                predicted=dict(self._predicted),
                features=features,
                confusion={actual: dict(row) for actual, row in self._confusion.items()},
                answered_by=dict(self._answered),
                shadow_agreement=dict(self._agreement),
                shadow_confusion={actual: dict(row) for actual, row in self._shadow_confusion.items()},
                arms={
                    arm: ArmCounts(
                        records=tally.records,
                        predicted=dict(tally.predicted),
                        confusion={actual: dict(row) for actual, row in tally.confusion.items()},
                        requests=tally.requests,
                        errors=tally.errors,
                        latency_counts=list(tally.latency),
                        latency_sum=tally.latency_sum,
                    )
                    for arm, tally in self._arms.items()
                },
            )
            self._reset()
        return counts
