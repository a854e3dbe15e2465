"""What a canary must pass while it soaks, computed from what the devices reported (never from guesses).

`check_canary` returns the first reason to roll back, or None: a canary device rejected the version (load,
sha256 or golden-sample health check failed), or the canary's merged telemetry on the new version shows an
error rate, p99 latency or feature drift above the limits, or an accuracy lower than the previous version's
on the rest of the group over the same period. A check needs `min_samples` observations to count.

`shadow_comparison` measures a shadow canary: the challenger's accuracy (merged `shadow_confusion`) against
the champion's (merged `confusion`) from the very windows of the canary devices in which the challenger ran
in shadow, so both are scored on the same feedback.

`ab_comparison` reports an A/B split: records and accuracy per arm (merged `arms`) from the canary's windows
in which the challenger had its arm. Promotion of an A/B challenger is an operator's decision.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson
import sqlalchemy as sa

from cloud_sync.bundles import BundleRegistry
from cloud_sync.fleet import load_windows
from cloud_sync.store import Store, events, windows
from contracts.telemetry import WindowCounts, merge_counts, score_drift

__all__ = ["Limits", "ShadowComparison", "ab_comparison", "check_canary", "rejections", "shadow_comparison"]


@dataclass(frozen=True)
class Limits:
    max_error_rate: float = 0.05
    max_p99_s: float = 0.25
    max_psi: float = 0.25
    max_accuracy_drop: float = 0.05
    min_samples: int = 50


def rejections(store: Store, devices: list[str], name: str, version: int, since: float) -> list[tuple[str, str]]:
    """(device, reason) of every `rejected` event for name/version received since `since`."""
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
    group: str,
    canary: list[str],
    name: str,
    version: int,
    previous: int | None,
    since: float,
    now: float,
    limits: Limits,
) -> str | None:
    refused = rejections(store, canary, name, version, since)
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
        drift, _ = score_drift(merged, manifest, min_count=limits.min_samples)
        worst = max(drift.items(), key=lambda item: item[1].psi, default=None)
        if worst is not None and worst[1].psi > limits.max_psi:
            return f"canary drift: PSI of {worst[0]} is {worst[1].psi:.3f}, above {limits.max_psi}"
    if previous is not None and merged.feedback_count >= limits.min_samples and merged.accuracy is not None:
        others = [
            r
            for r in load_windows(store, since, now, group, None, previous)
            if r.model_name == name and r.device_id not in canary
        ]
        baseline = merge_counts(record.counts for record in others)
        if baseline.feedback_count >= limits.min_samples and baseline.accuracy is not None:
            drop = baseline.accuracy - merged.accuracy
            if drop > limits.max_accuracy_drop:
                return (
                    f"canary accuracy {merged.accuracy:.3f} is {drop:.3f} below {name}/{previous}'s "
                    f"{baseline.accuracy:.3f} on the rest of the group (limit {limits.max_accuracy_drop})"
                )
    return None


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


def shadow_comparison(
    store: Store, group: str, canary: list[str], name: str, champion: int, challenger: int, since: float, now: float
) -> ShadowComparison:
    """Merged counts of the canary's windows on the champion that carry the challenger as their shadow."""
    payloads = _canary_payloads(store, group, canary, name, champion, since, now)
    merged = merge_counts(
        WindowCounts.model_validate(p) for p in payloads if p.get("shadow_model_version") == challenger
    )
    challenger_labels = sum(sum(row.values()) for row in merged.shadow_confusion.values())
    return ShadowComparison(merged.feedback_count, merged.accuracy, merged.shadow_accuracy, challenger_labels)


def ab_comparison(
    store: Store, group: str, canary: list[str], name: str, champion: int, challenger: int, since: float, now: float
) -> dict[str, dict[str, object]]:
    """Per arm of an A/B split on the canary: version, records answered, share of records, feedback labels
    and accuracy, from the canary's windows on the champion that counted the challenger's arm."""
    payloads = _canary_payloads(store, group, canary, name, champion, since, now)
    merged = merge_counts(WindowCounts.model_validate(p) for p in payloads if p.get("ab_model_version") == challenger)
    total = sum(part.records for part in merged.arms.values())
    report: dict[str, dict[str, object]] = {}
    for arm, version in (("champion", champion), ("challenger", challenger)):
        part = merged.arms.get(arm)
        records = part.records if part else 0
        report[arm] = {
            "model_version": version,
            "records": records,
            "share": records / total if total else None,
            "labels": part.feedback_count if part else 0,
            "accuracy": part.accuracy if part else None,
        }
    return report


def _canary_payloads(
    store: Store, group: str, canary: list[str], name: str, version: int, since: float, now: float
) -> list[dict[str, object]]:
    c = windows.c
    query = sa.select(c.payload).where(
        c.group_name == group,
        c.device_id.in_(canary),
        c.model_name == name,
        c.model_version == version,
        c.window_end > since,
        c.window_end <= now,
    )
    with store.engine.connect() as conn:
        return [orjson.loads(row.payload) for row in conn.execute(query)]
