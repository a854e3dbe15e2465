"""Baselines that follow the loop: drift a validated promotion accepted is judged against the device itself.

The rule (docs/loop.md, "Baselines that follow the loop"):
- A rollout in mode `shadow` promoted by its measured accuracy on its canary devices (the controller's
  `promote` with both accuracies in the audit log) validated the new model on each canary's own data. For
  each canary device, the drift that started the retrain is **accepted**: its firing drift alerts resolve
  with the reason ("accepted: machine-failure v2 validated on gw-3's data, shadow accuracy 0.838 vs 0.823")
  and an `accept drift` audit entry says so.
- From then on that device's drift is judged on its windows after the acceptance only. Its first windows on
  the promoted version form its **baseline** (until they hold `min_records` records; no verdict while it
  forms); later windows of that version are judged against the baseline (a chi-square that knows the
  baseline is a sample too), not against the training reference, which the dashboard still shows beside it.
  A later version on that device is judged against its own training reference again.
- Other devices keep the training reference of the version they run.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import sqlalchemy as sa

from cloud_sync.fleet.stats import WindowRecord, load_windows
from cloud_sync.store import audit
from cloud_sync.store.db import Store, alerts, audit_log, drift_baselines, rollouts
from contracts.drift import UNSEEN
from contracts.logs import log_event
from contracts.manifest import CategoricalProfile, FeatureProfile, Manifest, NumericProfile
from contracts.telemetry import CategoricalCounts, NumericCounts, WindowCounts, merge_counts

__all__ = [
    "Acceptance",
    "Baseline",
    "Baselines",
    "DriftReference",
    "Role",
    "accept_validated",
    "drift_reference",
    "judged_windows",
    "load_baselines",
    "refresh_baselines",
]

logger = logging.getLogger("edgeloop.cloud.baselines")

Role = Literal["before", "baseline", "against_baseline", "training"]
"""What a window is to drift on a device with a baseline: before the acceptance (not judged), part of the
baseline, judged against the baseline, or judged against its version's training reference."""


@dataclass(frozen=True)
class Baseline:
    device_id: str
    model_name: str
    model_version: int
    accepted_at: float
    reason: str
    rollout_id: str | None = None
    ready_at: float | None = None
    """End of the baseline's last window; None while it forms."""
    records: int = 0
    counts: WindowCounts | None = None

    @property
    def ready(self) -> bool:
        return self.ready_at is not None and self.counts is not None

    def role(self, record: WindowRecord) -> Role:
        if record.window_end <= self.accepted_at:
            return "before"
        if record.model_name == self.model_name and (record.model_version or 0) < self.model_version:
            # The champion's last windows, sent after the promotion by a device still switching (and a window
            # that straddles the switch): the drift on it is what was accepted, not new drift.
            return "before"
        if record.model_version != self.model_version or record.model_name != self.model_name:
            return "training"
        if self.ready_at is None or record.window_end <= self.ready_at:
            return "baseline"
        return "against_baseline"

    def reference(self, manifest: Manifest) -> Manifest:
        """The manifest with its reference profile replaced by the baseline's proportions (same bins; categories
        keep `__unseen__`, the categories the version was not trained on, as one of theirs)."""
        assert self.counts is not None
        profile: dict[str, FeatureProfile] = {}
        for name, reference in manifest.reference_profile.items():
            observed = self.counts.features.get(name)
            if isinstance(reference, NumericProfile) and isinstance(observed, NumericCounts):
                bins = np.asarray(observed.bins, dtype=np.float64)
                if bins.sum() > 0 and bins.size == len(reference.proportions):
                    profile[name] = reference.model_copy(update={"proportions": list(bins / bins.sum())})
                    continue
            elif isinstance(reference, CategoricalProfile) and isinstance(observed, CategoricalCounts):
                known = {key: observed.counts.get(key, 0) for key in [*reference.frequencies, UNSEEN]}
                total = sum(known.values())
                if total > 0:
                    frequencies = {key: count / total for key, count in known.items()}
                    profile[name] = reference.model_copy(update={"frequencies": frequencies})
                    continue
            profile[name] = reference
        predicted = self.counts.predicted
        total = sum(predicted.get(key, 0) for key in manifest.prediction_profile)
        prediction = (
            {key: predicted.get(key, 0) / total for key in manifest.prediction_profile}
            if total
            else manifest.prediction_profile
        )
        return manifest.model_copy(update={"reference_profile": profile, "prediction_profile": prediction})


Baselines = dict[tuple[str, str], Baseline]  # (device, model name) -> its baseline


@dataclass(frozen=True)
class DriftReference:
    """What one device's windows of one version are judged against."""

    manifest: Manifest
    """The version's manifest, its reference profile replaced by the baseline's when `kind` is `baseline`."""
    kind: Literal["training", "baseline"]
    records: int | None = None
    """Baseline: the records it rests on (the chi-square then treats it as a sample)."""
    since: float | None = None
    """Baseline: when the drift was accepted."""

    def describe(self) -> str:
        return f"its baseline of {self.records} records" if self.kind == "baseline" else "the training reference"


def judged_windows(records: list[WindowRecord], baselines: Baselines) -> list[WindowRecord]:
    """The windows drift is judged on: a device's windows before its acceptance and those forming its
    baseline are left out."""
    kept = []
    for record in records:
        baseline = baselines.get((record.device_id, record.model_name or ""))
        if baseline is None or baseline.role(record) in ("training", "against_baseline"):
            kept.append(record)
    return kept


def drift_reference(
    baselines: Baselines, device: str, name: str | None, version: int | None, manifest: Manifest
) -> DriftReference:
    """The reference for a device's windows of `name`/`version`: its ready baseline for that version, else the
    version's training reference."""
    baseline = baselines.get((device, name or ""))
    if baseline is not None and baseline.ready and baseline.model_version == version:
        return DriftReference(baseline.reference(manifest), "baseline", baseline.records, baseline.accepted_at)
    return DriftReference(manifest, "training")


@dataclass(frozen=True)
class Acceptance:
    baseline: Baseline
    resolved: list[dict[str, Any]]
    """The drift alerts it resolved (`alerts` rows), for the evaluator to publish."""


def load_baselines(store: Store) -> Baselines:
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(drift_baselines)).mappings().all()
    return {
        (row["device_id"], row["model_name"]): Baseline(
            device_id=row["device_id"],
            model_name=row["model_name"],
            model_version=row["model_version"],
            accepted_at=row["accepted_at"],
            reason=row["reason"],
            rollout_id=row["rollout_id"],
            ready_at=row["ready_at"],
            records=row["records"],
            counts=WindowCounts.model_validate_json(row["counts"]) if row["counts"] else None,
        )
        for row in rows
    }


def accept_validated(store: Store, drift_rules: set[str], now: float | None = None) -> list[Acceptance]:
    """Accept the drift of every canary device of a shadow rollout promoted on measured accuracy since the
    device's last acceptance: a new (forming) baseline, its firing drift alerts resolved with the reason."""
    now = time.time() if now is None else now
    known = load_baselines(store)
    query = sa.select(audit_log).where(audit_log.c.action == "promote").order_by(audit_log.c.id)
    with store.engine.connect() as conn:
        entries = [dict(row) for row in conn.execute(query).mappings()]
    accepted = []
    for entry in entries:
        details = entry["details"] or {}
        if details.get("mode") != "shadow" or details.get("challenger_accuracy") is None:
            continue
        with store.engine.connect() as conn:
            rollout = conn.execute(sa.select(rollouts).where(rollouts.c.id == details.get("rollout_id"))).first()
        if rollout is None:
            continue
        for device in details.get("canary") or []:
            previous = known.get((device, rollout.model_name))
            if previous is not None and previous.accepted_at >= entry["at"]:
                continue
            reason = (
                f"accepted: {rollout.model_name} v{rollout.model_version} validated on {device}'s data, shadow "
                f"accuracy {details['challenger_accuracy']:.3f} vs {details.get('champion_accuracy') or 0.0:.3f}"
            )
            baseline = Baseline(device, rollout.model_name, rollout.model_version, entry["at"], reason, rollout.id)
            accepted.append(Acceptance(baseline, _accept(store, baseline, drift_rules, now)))
            known[(device, rollout.model_name)] = baseline
    return accepted


def _accept(store: Store, baseline: Baseline, drift_rules: set[str], now: float) -> list[dict[str, Any]]:
    values = {
        "device_id": baseline.device_id,
        "model_name": baseline.model_name,
        "model_version": baseline.model_version,
        "rollout_id": baseline.rollout_id,
        "accepted_at": baseline.accepted_at,
        "reason": baseline.reason,
        "ready_at": None,
        "records": 0,
        "counts": None,
    }
    c = alerts.c
    firing = sa.and_(c.state == "firing", c.rule.in_(sorted(drift_rules)), c.subject.like(f"{baseline.device_id}/%"))
    with store.begin() as conn:
        conn.execute(
            drift_baselines.delete().where(
                drift_baselines.c.device_id == baseline.device_id, drift_baselines.c.model_name == baseline.model_name
            )
        )
        conn.execute(drift_baselines.insert().values(**values))
        resolved = [row.id for row in conn.execute(sa.select(c.id).where(firing))]
        if resolved:
            done = {"state": "resolved", "resolved_at": now, "resolution": baseline.reason}
            conn.execute(alerts.update().where(c.id.in_(resolved)).values(**done))
        rows = [dict(row) for row in conn.execute(sa.select(alerts).where(c.id.in_(resolved))).mappings()]
        audit.record(conn, "controller", "accept drift", target=baseline.device_id, reason=baseline.reason,
                     details={"model": f"{baseline.model_name}/{baseline.model_version}",
                              "rollout_id": baseline.rollout_id, "resolved_alerts": resolved})  # fmt: skip
    log_event(logger, "drift accepted", device=baseline.device_id, model=baseline.model_name,
              version=baseline.model_version, resolved_alerts=len(resolved))  # fmt: skip
    return rows


def refresh_baselines(store: Store, min_records: int, now: float | None = None) -> list[Baseline]:
    """Complete each forming baseline whose device has sent `min_records` records on the accepted version
    since the acceptance (whole windows, oldest first). Returns the baselines completed now."""
    now = time.time() if now is None else now
    completed = []
    for baseline in load_baselines(store).values():
        if baseline.ready:
            continue
        records = load_windows(store, baseline.accepted_at, now, device=baseline.device_id,
                               model_version=baseline.model_version)  # fmt: skip
        taken: list[WindowRecord] = []
        for record in records:
            if record.model_name != baseline.model_name:
                continue
            taken.append(record)
            merged = merge_counts(r.counts for r in taken)
            if merged.records >= min_records:
                with store.begin() as conn:
                    conn.execute(
                        drift_baselines.update()
                        .where(
                            drift_baselines.c.device_id == baseline.device_id,
                            drift_baselines.c.model_name == baseline.model_name,
                            drift_baselines.c.accepted_at == baseline.accepted_at,
                        )
                        .values(ready_at=record.window_end, records=merged.records, counts=merged.model_dump_json())
                    )
                log_event(logger, "baseline ready", device=baseline.device_id, model=baseline.model_name,
                          version=baseline.model_version, records=merged.records, windows=len(taken))  # fmt: skip
                completed.append(baseline)
                break
    return completed
