"""What a canary must pass while it soaks, computed from what the devices reported (never from guesses).

`check_canary` returns the first reason to roll back, or None: a canary device rejected the version (load,
sha256 or golden-sample health check failed), or the canary's merged telemetry on the new version shows an
error rate, p99 latency or feature drift above the limits (drift: PSI above `max_psi` and the chi-square
evidence of `contracts.drift_stats`), or an accuracy lower than the previous version's
on the rest of the group over the same period. A check needs `min_samples` observations to count.

`shadow_comparison` measures a shadow canary: the challenger's accuracy (merged `shadow_confusion`) against
the champion's (merged `confusion`) from the very windows of the canary devices in which the challenger ran
in shadow, so both are scored on the same feedback.

`ab_report` reports an A/B split: requests, failures, p99, records and accuracy per arm (merged `arms`)
from the canary's windows in which the challenger had its arm (their `model_version` is the champion's, so
`check_canary`'s window checks never see an A/B challenger). `check_ab` is its guard: the challenger's error
rate (requests in which it failed and the champion answered, at least `min_samples` requests) or p99 above the
limits, or its accuracy more than `max_accuracy_drop` below the champion arm's (at least `min_samples` labels
on each arm). Whether the challenger is better or worse is the sequential test's call (`sequential.py`, fed
by `ab_windows` in the order the windows ended); acting on it is opt-in (`SequentialRule.auto_decide`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import orjson
import sqlalchemy as sa

from cloud_sync.fleet.stats import load_windows
from cloud_sync.rollouts.model import Rollout
from cloud_sync.rollouts.sequential import SequentialRule
from cloud_sync.store.bundles import BundleRegistry
from cloud_sync.store.db import Store, events, windows
from contracts.drift_stats import DriftRule
from contracts.telemetry import ArmCounts, WindowCounts, merge_counts, score_drift

__all__ = [
    "Limits",
    "ShadowComparison",
    "ab_arms",
    "ab_report",
    "ab_windows",
    "check_ab",
    "check_canary",
    "merge_arms",
    "rejections",
    "shadow_comparison",
]


@dataclass(frozen=True)
class Limits:
    max_error_rate: float = 0.05
    max_p99_s: float = 0.25
    max_psi: float = 0.25
    max_accuracy_drop: float = 0.05
    min_samples: int = 50
    drift: DriftRule = field(default_factory=DriftRule)
    """The drift decision (docs/loop.md "Drift"); its minimum effect is `max_psi`."""
    ab: SequentialRule = field(default_factory=SequentialRule)
    """The A/B test's sequential decision (`sequential.py`) and whether the controller acts on it."""


def rejections(store: Store, rollout: Rollout) -> list[tuple[str, str]]:
    """(device, reason) of every `rejected` event of the rollout's version from its canary since it started."""
    devices, name, version, since = list(rollout.canary), rollout.model_name, rollout.model_version, rollout.created_at
    if not devices:
        return []
    query = (
        sa.select(events.c.device_id, events.c.reason)
        .where(events.c.device_id.in_(devices), events.c.kind == "rejected")
        .where(events.c.model_name == name, events.c.model_version == version, events.c.received_at >= since)
        .order_by(events.c.id)
    )
    with store.engine.connect() as conn:
        return [(row.device_id, row.reason or "no reason given") for row in conn.execute(query)]


def check_canary(
    store: Store,
    registry: BundleRegistry,
    rollout: Rollout,
    *,
    now: float,
    limits: Limits,
    count_rejections: bool = True,
) -> str | None:
    """The first reason to roll `rollout` back from what its canary reported since it started (module doc), or None.
    `count_rejections=False`: rejections are left to a staged rollout's abort rule (`pacing`)."""
    group, canary, name, version = rollout.group, list(rollout.canary), rollout.model_name, rollout.model_version
    previous, since = rollout.previous_version, rollout.created_at
    refused = rejections(store, rollout) if count_rejections else []
    if refused:
        device, reason = refused[0]
        return f"canary device {device} rejected {name}/{version}: {reason}"
    records = [r for r in load_windows(store, since, now, group, canary, version) if r.model_name == name]
    merged = merge_counts(record.counts for record in records)
    if merged.requests >= limits.min_samples:
        error_rate = sum(merged.errors.values()) / merged.requests
        if error_rate > limits.max_error_rate:
            return f"canary error rate {error_rate:.3f} is above {limits.max_error_rate} ({merged.requests} requests)"
        p99 = merged.latency_quantile(0.99)
        if p99 is not None and p99 > limits.max_p99_s:
            return f"canary p99 latency {p99}s is above {limits.max_p99_s}s ({merged.requests} requests)"
    manifest = registry.manifest(name, version)
    if manifest is not None and merged.records >= limits.min_samples:
        rule = replace(limits.drift, min_psi=limits.max_psi)
        drift, _ = score_drift(merged, manifest, min_count=limits.min_samples, rule=rule)
        worst = max(((f, score) for f, score in drift.items() if score.drifted), key=lambda i: i[1].psi, default=None)
        if worst is not None:
            return (
                f"canary drift: PSI of {worst[0]} is {worst[1].psi:.3f}, above {limits.max_psi}, "
                f"p={worst[1].p_adjusted:.2g} on {worst[1].count} records"
            )
    if previous is not None and merged.feedback_count >= limits.min_samples and merged.accuracy is not None:
        others = [
            r
            for r in load_windows(store, since, now, group, None, previous)
            if r.model_name == name and r.device_id not in canary
        ]
        baseline = merge_counts(record.counts for record in others)
        drop = _accuracy_drop(merged, baseline, limits)
        if drop is not None:
            return (
                f"canary accuracy {merged.accuracy:.3f} is {drop:.3f} below {name}/{previous}'s "
                f"{baseline.accuracy:.3f} on the rest of the group (limit {limits.max_accuracy_drop})"
            )
    return None


def _accuracy_drop(mine: WindowCounts | ArmCounts, theirs: WindowCounts | ArmCounts, limits: Limits) -> float | None:
    """How far `mine`'s accuracy is below `theirs`, when both have `min_samples` labels and the drop is over
    `max_accuracy_drop`; else None."""
    if min(mine.feedback_count, theirs.feedback_count) < limits.min_samples:
        return None
    if mine.accuracy is None or theirs.accuracy is None:
        return None
    drop = theirs.accuracy - mine.accuracy
    return drop if drop > limits.max_accuracy_drop else None


@dataclass(frozen=True)
class ShadowComparison:
    labels: int
    """Feedback labels on predictions the challenger also made (the champion's count in the same windows)."""
    champion_accuracy: float | None
    challenger_accuracy: float | None
    challenger_labels: int

    def as_details(self) -> dict[str, object]:
        return {
            "labels": self.labels,
            "challenger_labels": self.challenger_labels,
            "champion_accuracy": self.champion_accuracy,
            "challenger_accuracy": self.challenger_accuracy,
        }


def shadow_comparison(store: Store, rollout: Rollout, *, since: float, now: float) -> ShadowComparison:
    """Merged counts of the canary's windows on the champion (the rollout's previous version) between `since`
    and `now` that carry the challenger (its version) as their shadow."""
    challenger = rollout.model_version
    payloads = _canary_payloads(store, rollout, since=since, now=now)
    merged = merge_counts(
        WindowCounts.model_validate(p) for p in payloads if p.get("shadow_model_version") == challenger
    )
    challenger_labels = sum(sum(row.values()) for row in merged.shadow_confusion.values())
    return ShadowComparison(merged.feedback_count, merged.accuracy, merged.shadow_accuracy, challenger_labels)


def ab_windows(store: Store, rollout: Rollout, *, now: float) -> list[dict[str, ArmCounts]]:
    """The arms (`champion`, `challenger`) of each canary window on the champion (the rollout's previous
    version) since the rollout started that counted the challenger's arm, in the order the windows ended."""
    challenger = rollout.model_version
    payloads = _canary_payloads(store, rollout, since=rollout.created_at, now=now)
    counts = [WindowCounts.model_validate(p) for p in payloads if p.get("ab_model_version") == challenger]
    return [{arm: window.arms.get(arm) or ArmCounts() for arm in ("champion", "challenger")} for window in counts]


def ab_arms(store: Store, rollout: Rollout, *, now: float) -> dict[str, ArmCounts]:
    """The merged counts of each arm (`champion`, `challenger`) of `ab_windows`."""
    return merge_arms(ab_windows(store, rollout, now=now))


def merge_arms(per_window: list[dict[str, ArmCounts]]) -> dict[str, ArmCounts]:
    """Each arm's counts summed over windows (`ab_windows`)."""
    merged = merge_counts(WindowCounts(arms=arms) for arms in per_window)
    return {arm: merged.arms.get(arm) or ArmCounts() for arm in ("champion", "challenger")}


def ab_report(arms: dict[str, ArmCounts], rollout: Rollout) -> dict[str, dict[str, Any]]:
    """Per arm: version, requests, failed requests and their rate, p99 of its model's time (null when
    unknown or over the last latency bucket), records answered, share of records, feedback labels, accuracy."""
    total = sum(part.records for part in arms.values())
    report: dict[str, dict[str, Any]] = {}
    for arm, version in (("champion", rollout.previous_version), ("challenger", rollout.model_version)):
        part = arms[arm]
        p99 = part.latency_quantile(0.99)
        report[arm] = {
            "model_version": version,
            "requests": part.requests,
            "errors": part.errors,
            "error_rate": part.error_rate,
            "p99_s": None if p99 == float("inf") else p99,
            "records": part.records,
            "share": part.records / total if total else None,
            "labels": part.feedback_count,
            "accuracy": part.accuracy,
        }
    return report


def check_ab(arms: dict[str, ArmCounts], rollout: Rollout, *, limits: Limits) -> str | None:
    """The first reason to stop an A/B split (module doc), or None."""
    name, champion, challenger = rollout.model_name, rollout.previous_version, rollout.model_version
    mine, theirs = arms["challenger"], arms["champion"]
    ref = f"A/B challenger {name}/{challenger}"
    requests, errors = mine.requests, mine.errors
    if requests >= limits.min_samples:
        if errors / requests > limits.max_error_rate:
            return (
                f"{ref} failed in {errors} of {requests} requests (error rate {errors / requests:.3f}, above "
                f"{limits.max_error_rate}); the champion answered them"
            )
        p99 = mine.latency_quantile(0.99)
        if p99 is not None and p99 > limits.max_p99_s:
            return f"{ref} p99 latency {p99}s is above {limits.max_p99_s}s ({requests} requests)"
    drop = _accuracy_drop(mine, theirs, limits)
    if drop is not None:
        return (
            f"{ref} accuracy {mine.accuracy:.3f} on {mine.feedback_count} labels is {drop:.3f} below champion "
            f"{name}/{champion}'s {theirs.accuracy:.3f} on {theirs.feedback_count} labels "
            f"(limit {limits.max_accuracy_drop})"
        )
    return None


def _canary_payloads(store: Store, rollout: Rollout, *, since: float, now: float) -> list[dict[str, object]]:
    """The telemetry payloads of the canary's windows on the champion (the previous version) in (since, now]."""
    c = windows.c
    query = sa.select(c.payload).where(
        c.group_name == rollout.group,
        c.device_id.in_(rollout.canary),
        c.model_name == rollout.model_name,
        c.model_version == rollout.previous_version,
        c.window_end > since,
        c.window_end <= now,
    )
    query = query.order_by(c.window_end, c.id)
    with store.engine.connect() as conn:
        return [orjson.loads(row.payload) for row in conn.execute(query)]
