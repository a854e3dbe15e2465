"""The alert evaluator: the rules (`rules.py`) over the fleet's merged telemetry, device status and rollouts.

Drift (`psi_above`) follows the loop (cloud_sync/loop/baselines.py): each evaluation first accepts the drift of
the canary devices of a shadow rollout promoted on measured accuracy (their drift alerts resolve with that
reason) and completes forming baselines; a device with a baseline is judged on its windows after the
acceptance, against its baseline for the accepted version.

Each evaluation computes, per rule, the subjects in breach (a device, a group, `device/feature`, a rollout);
a breach that lasts `for` fires; a firing alert whose breach is gone resolves. Firings and resolutions are
stored in `alerts`, published retained on `edgeloop/v1/alerts/{rule}/{subject}` and POSTed to the webhook
when one is set. Pending breaches (inside their `for`) live in memory: a restart restarts their clock.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable
from dataclasses import replace
from typing import Any, NamedTuple

import orjson
import sqlalchemy as sa

from cloud_sync.alerts.queries import public
from cloud_sync.alerts.rules import Rule
from cloud_sync.fleet.stats import WindowRecord, load_windows
from cloud_sync.loop.baselines import (
    Baselines,
    accept_validated,
    drift_reference,
    judged_windows,
    load_baselines,
    refresh_baselines,
)
from cloud_sync.store.bundles import BundleRegistry
from cloud_sync.store.db import Store, alerts, devices, rollouts
from cloud_sync.times import clock_offset_text
from contracts.drift_stats import DriftRule
from contracts.logs import log_event
from contracts.telemetry import merge_counts, score_drift
from contracts.topics import PREFIX

__all__ = ["AlertEvaluator"]

logger = logging.getLogger("edgeloop.cloud.alerts")


class Breach(NamedTuple):
    value: float
    message: str
    p_value: float | None = None
    """Drift rules: the adjusted p-value of the merged counts."""
    records: int | None = None
    """Drift rules: the records the decision rests on."""


Breaches = dict[str, Breach]  # subject -> breach


class AlertEvaluator:
    def __init__(
        self,
        store: Store,
        registry: BundleRegistry,
        rules: list[Rule],
        publish: Callable[[str, bytes], None] | None = None,
        webhook_url: str | None = None,
        online_timeout_s: float = 120.0,
        *,
        drift_rule: DriftRule | None = None,
        clock_skew_limit_s: float = 300.0,
        baseline_records: int = 500,
    ) -> None:
        self.store, self.registry = store, registry
        self.rules = [  # a clock-skew rule without a threshold takes the cloud's clock_skew_limit_s
            rule.model_copy(update={"threshold": clock_skew_limit_s})
            if rule.kind == "clock_skew_above" and not rule.threshold
            else rule
            for rule in rules
        ]
        self.publish = publish
        self.webhook_url = webhook_url
        self.online_timeout_s = online_timeout_s
        self.drift_rule = drift_rule or DriftRule()
        self.baseline_records = baseline_records
        self._baselines: Baselines = {}
        self._pending: dict[tuple[str, str], float] = {}

    def run(self, stop: threading.Event, interval_s: float) -> None:
        while not stop.wait(interval_s):
            try:
                self.evaluate()
            except Exception:
                logger.exception("alert evaluation failed")

    def evaluate(self, now: float | None = None) -> list[dict[str, Any]]:
        """Evaluate every rule once; returns the firings and resolutions it caused."""
        now = time.time() if now is None else now
        cache: dict[float, list[WindowRecord]] = {}
        changes: list[dict[str, Any]] = []
        drift_rules = {rule.name for rule in self.rules if rule.kind == "psi_above"}
        if drift_rules:
            for acceptance in accept_validated(self.store, drift_rules, now):
                changes.extend(self._notify(row) for row in acceptance.resolved)
            refresh_baselines(self.store, self.baseline_records, now)
            self._baselines = load_baselines(self.store)
        for rule in self.rules:
            if rule.kind == "device_offline":
                breaches = self._offline(rule, now)
            elif rule.kind == "rollout_failed":
                breaches = self._rollouts(rule, now)
            elif rule.kind == "clock_skew_above":
                breaches = self._clock_skew(rule, now)
            else:
                if rule.window not in cache:
                    cache[rule.window] = load_windows(self.store, now - rule.window, now)
                breaches = self._telemetry(rule, cache[rule.window])
            changes.extend(self._apply(rule, breaches, now))
        return changes

    # -- conditions ---------------------------------------------------------------------------------
    def _telemetry(self, rule: Rule, records: list[WindowRecord]) -> Breaches:
        by_subject: dict[str, list[WindowRecord]] = defaultdict(list)
        for record in records:
            by_subject[record.device_id if rule.scope == "device" else record.group].append(record)
        breaches: Breaches = {}
        for subject, subset in by_subject.items():
            merged = merge_counts(record.counts for record in subset)
            if rule.kind == "accuracy_below":
                if merged.feedback_count >= rule.min_samples and (merged.accuracy or 0.0) < rule.threshold:
                    breaches[subject] = Breach(
                        merged.accuracy or 0.0,
                        f"accuracy {merged.accuracy:.3f} on {subject} is "
                        f"below {rule.threshold} ({merged.feedback_count} labels)",
                    )
            elif rule.kind == "error_rate_above" and merged.requests >= rule.min_samples:
                rate = sum(merged.errors.values()) / merged.requests
                if rate > rule.threshold:
                    breaches[subject] = Breach(rate, f"error rate {rate:.3f} on {subject} is above {rule.threshold}")
            elif rule.kind == "p99_above" and merged.requests >= rule.min_samples:
                p99 = merged.latency_quantile(0.99) or 0.0
                if p99 > rule.threshold:
                    breaches[subject] = Breach(p99, f"p99 latency {p99}s on {subject} is above {rule.threshold}s")
            elif rule.kind == "psi_above":
                breaches.update(self._drift(rule, subject, subset))
        return breaches

    def _drift(self, rule: Rule, subject: str, records: list[WindowRecord]) -> Breaches:
        by_version: dict[tuple[str | None, int | None], list[WindowRecord]] = defaultdict(list)
        device_scope = rule.scope == "device"
        for record in judged_windows(records, self._baselines) if device_scope else records:
            by_version[(record.model_name, record.model_version)].append(record)
        breaches: Breaches = {}
        for (name, version), subset in by_version.items():
            manifest = self.registry.manifest(name, version)
            if manifest is None:
                continue
            baselines = self._baselines if device_scope else {}
            reference = drift_reference(baselines, subset[0].device_id, name, version, manifest)
            drift_rule = replace(self.drift_rule, min_psi=rule.threshold)
            merged = merge_counts(r.counts for r in subset)
            scores, _ = score_drift(
                merged,
                reference.manifest,
                min_count=rule.min_samples,
                rule=drift_rule,
                reference_records=reference.records,
            )
            for feature, score in scores.items():
                if score.drifted:
                    message = (
                        f"PSI of {feature} on {subject} ({name}/{version}) is {score.psi:.3f}, above {rule.threshold}, "
                        f"p={score.p_adjusted:.2g} ({drift_rule.correction}) on {score.count} records, "
                        f"against {reference.describe()}"
                    )
                    breaches[f"{subject}/{feature}"] = Breach(score.psi, message, score.p_adjusted, score.count)
        return breaches

    def _offline(self, rule: Rule, now: float) -> Breaches:
        with self.store.engine.connect() as conn:
            rows = conn.execute(
                sa.select(devices.c.device_id, devices.c.online, devices.c.status_at, devices.c.last_seen)
            ).all()
        breaches: Breaches = {}
        for row in rows:
            if row.online is False and row.status_at is not None:
                since = row.status_at
            else:
                since = row.last_seen + self.online_timeout_s
            if now - since > rule.threshold and (row.online is False or now - row.last_seen > self.online_timeout_s):
                minutes = (now - since) / 60
                breaches[row.device_id] = Breach(minutes, f"device {row.device_id} offline for {minutes:.1f} min")
        return breaches

    def _clock_skew(self, rule: Rule, now: float) -> Breaches:
        """Devices whose clock offset, measured within the rule's window, is beyond the limit (ingest/clocks.py)."""
        limit = rule.threshold
        c = devices.c
        query = sa.select(c.device_id, c.clock_offset_s).where(
            c.clock_offset_at >= now - rule.window, sa.func.abs(c.clock_offset_s) > limit
        )
        with self.store.engine.connect() as conn:
            rows = conn.execute(query).all()
        breaches: Breaches = {}
        for row in rows:
            offset = float(row.clock_offset_s)
            breaches[row.device_id] = Breach(
                abs(offset),
                f"clock of {row.device_id} is {clock_offset_text(offset)} (limit {limit:g} s): its window times "
                "are corrected by the cloud; set up NTP on the device",
            )
        return breaches

    def _rollouts(self, rule: Rule, now: float) -> Breaches:
        with self.store.engine.connect() as conn:
            rows = conn.execute(sa.select(rollouts).where(rollouts.c.created_at > now - rule.window)).mappings().all()
        breaches: Breaches = {}
        for row in rows:
            if row["state"] not in ("rolled_back", "failed"):
                continue
            later = [
                r
                for r in rows
                if r["group_name"] == row["group_name"]
                and r["created_at"] > row["created_at"]
                and r["state"] == "promoted"
            ]
            if not later:
                message = (
                    f"rollout {row['id']} of {row['model_name']}/{row['model_version']} in group "
                    f"{row['group_name']} {row['state']}: {row['reason']}"
                )
                breaches[row["id"]] = Breach(1.0, message)
        return breaches

    # -- state changes ------------------------------------------------------------------------------
    def _apply(self, rule: Rule, breaches: Breaches, now: float) -> list[dict[str, Any]]:
        with self.store.engine.connect() as conn:
            firing = {
                row.subject: row.id
                for row in conn.execute(
                    sa.select(alerts.c.id, alerts.c.subject).where(
                        alerts.c.rule == rule.name, alerts.c.state == "firing"
                    )
                )
            }
        changes = []
        for subject, breach in breaches.items():
            if subject in firing:
                continue
            started = self._pending.setdefault((rule.name, subject), now)
            if now - started >= rule.for_:
                row = {
                    "rule": rule.name,
                    "subject": subject,
                    "state": "firing",
                    "severity": rule.severity,
                    "value": breach.value,
                    "threshold": rule.threshold,
                    "message": breach.message,
                    "p_value": breach.p_value,
                    "records": breach.records,
                    "fired_at": now,
                }
                with self.store.begin() as conn:
                    key = conn.execute(alerts.insert().values(**row)).inserted_primary_key
                    row["id"] = key[0] if key else None
                self._pending.pop((rule.name, subject), None)
                changes.append(self._notify(row))
        for key in [key for key in self._pending if key[0] == rule.name and key[1] not in breaches]:
            del self._pending[key]
        for subject, alert_id in firing.items():
            if subject in breaches:
                continue
            with self.store.begin() as conn:
                conn.execute(alerts.update().where(alerts.c.id == alert_id).values(state="resolved", resolved_at=now))
                row = dict(conn.execute(sa.select(alerts).where(alerts.c.id == alert_id)).mappings().one())
            changes.append(self._notify(row))
        return changes

    def _notify(self, row: dict[str, Any]) -> dict[str, Any]:
        payload = public(row)
        body = orjson.dumps(payload)
        level = logging.WARNING if row["state"] == "firing" else logging.INFO
        log_event(
            logger,
            f"alert {row['state']}",
            level=level,
            rule=row["rule"],
            subject=row["subject"],
            message=row["message"],
        )
        if self.publish is not None:
            topic = f"{PREFIX}/alerts/{row['rule']}/{re.sub(r'[^A-Za-z0-9_.-]', '_', row['subject'])}"
            try:
                self.publish(topic, body)
            except Exception as exc:
                log_event(logger, "alert not published", level=logging.WARNING, error=str(exc))
        if self.webhook_url:
            threading.Thread(target=_post, args=(self.webhook_url, body), daemon=True).start()
        return payload


def _post(url: str, body: bytes) -> None:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            response.read(1024)
    except OSError as exc:
        log_event(logger, "webhook failed", level=logging.WARNING, url=url, error=str(exc))
