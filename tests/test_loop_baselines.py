"""Baselines that follow the loop (cloud_sync/loop/baselines.py) and retraining data that represents the fleet
(edgeloop/retrain_mixture.py), on a real SQLite store, the real ingest writer, real signed bundles (rf v1,
logreg v2) and the real alert evaluator and dashboard queries.

The shadow promotion itself is written as the controller writes it (its rollout row and `promote` audit entry
with both accuracies); the controller's own path is covered by tests/test_loop_shadow_canary.py and the whole
loop by the demo's full test.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest

from cloud_sync.alerts.evaluator import AlertEvaluator
from cloud_sync.alerts.queries import alert_list
from cloud_sync.alerts.rules import Rule
from cloud_sync.dashboard.queries import device_histograms, overview
from cloud_sync.fleet.stats import WindowRecord
from cloud_sync.ingest.writer import IngestWriter
from cloud_sync.loop.baselines import Baseline, load_baselines
from cloud_sync.store import audit
from cloud_sync.store.bundles import BundleRegistry
from cloud_sync.store.db import Store, rollouts
from contracts.bundle import load_bundle
from contracts.drift_stats import DriftRule
from contracts.signing import load_public_key
from contracts.telemetry import WindowCounts, merge_counts, score_drift
from edgeloop.retrain_mixture import fleet_sample
from tests.cloud_support import make_store
from tests.drift_helpers import reference_manifest, store_window, window_counts
from trainer.sample_data import make_machines

RULE = Rule(name="feature-drift", kind="psi_above", threshold=0.25, window=3600, min_samples=100)
ACCEPTED = "accepted: machine-failure v2 validated on gw-3's data, shadow accuracy 0.838 vs 0.823"


def _promote_in_shadow(store: Store, *, at: float) -> None:
    """What the controller records when a shadow canary on gw-3 is promoted on measured accuracy."""
    with store.begin() as conn:
        conn.execute(
            rollouts.insert().values(
                id="r-shadow", group_name="g", model_name="machine-failure", model_version=2, previous_version=1,
                canary=["gw-3"], soak_s=15, state="promoted", reason="at least as good, promoted", actor="controller",
                created_at=at - 30, soak_started_at=at - 20, finished_at=at, mode="shadow",
            )
        )  # fmt: skip
        details = {"rollout_id": "r-shadow", "previous_version": 1, "canary": ["gw-3"], "mode": "shadow",
                   "labels": 420, "challenger_labels": 420,
                   "champion_accuracy": 0.823, "challenger_accuracy": 0.838}  # fmt: skip
        audit.record(conn, "controller", "promote", target="machine-failure/2 in group g", reason="promoted",
                     details=details, at=at)  # fmt: skip


def _drifted(records: int, seed: int) -> pd.DataFrame:
    return make_machines(records, seed=seed, drift=True)


def test_a_validated_promotion_accepts_the_drift_and_judges_the_device_against_its_baseline(
    rf_bundle, logreg_bundle_v2, tmp_path: Path
) -> None:
    registry = BundleRegistry(tmp_path / "bundles", load_public_key(rf_bundle.public_key))
    v1 = registry.add(rf_bundle.bundle).manifest
    v2 = registry.add(logreg_bundle_v2.bundle).manifest
    t0 = time.time() - 3000
    with make_store("sqlite", tmp_path) as store:
        writer = IngestWriter(store)
        evaluator = AlertEvaluator(store, registry, [RULE], drift_rule=DriftRule(alpha=0.01), baseline_records=500)

        # gw-3 drifts on v1 (the heat wave and the beta firmware); gw-1 is healthy.
        store_window(writer, v1, "gw-3", _drifted(300, seed=1), seq=1, at=t0 + 60)
        store_window(writer, v1, "gw-1", make_machines(300, seed=2), seq=1, at=t0 + 60)
        fired = evaluator.evaluate(now=t0 + 70)
        assert fired and {a["subject"].split("/")[0] for a in fired} == {"gw-3"}, fired
        assert "gw-3/temperature_c" in {a["subject"] for a in fired}

        # v2 validated on gw-3's own data and promoted: the drift is accepted, its alerts resolve with the reason.
        _promote_in_shadow(store, at=t0 + 100)
        changes = evaluator.evaluate(now=t0 + 110)
        assert {c["subject"] for c in changes} == {a["subject"] for a in fired}
        assert all(c["state"] == "resolved" and c["resolution"] == ACCEPTED for c in changes), changes
        assert alert_list(store, "firing") == []
        resolved = alert_list(store, "resolved")
        assert {a["resolution"] for a in resolved} == {ACCEPTED} and len(resolved) == len(fired)
        accepted = audit.entries(store, action="accept drift")
        assert [(e["target"], e["reason"]) for e in accepted] == [("gw-3", ACCEPTED)]
        assert sorted(accepted[0]["details"]["resolved_alerts"]) == sorted(a["id"] for a in fired)
        baseline = load_baselines(store)[("gw-3", "machine-failure")]
        assert baseline.model_version == 2 and not baseline.ready

        # Its first windows on v2 form the baseline (500 records: two windows of 300); no verdict meanwhile.
        store_window(writer, v2, "gw-3", _drifted(300, seed=3), seq=2, at=t0 + 160)
        assert evaluator.evaluate(now=t0 + 170) == [] and not load_baselines(store)[("gw-3", "machine-failure")].ready
        store_window(writer, v2, "gw-3", _drifted(300, seed=4), seq=3, at=t0 + 220)
        store_window(writer, v2, "gw-1", make_machines(300, seed=5), seq=2, at=t0 + 220)
        assert evaluator.evaluate(now=t0 + 230) == []
        baseline = load_baselines(store)[("gw-3", "machine-failure")]
        assert baseline.ready and baseline.records == 600 and baseline.ready_at == pytest.approx(t0 + 220)

        # More of the same drifted readings: calm against the baseline, though v2's training reference says drifted.
        later = [_drifted(300, seed=6), _drifted(300, seed=7)]
        for seq, (frame, at) in enumerate(zip(later, (t0 + 400, t0 + 460), strict=True), start=4):
            store_window(writer, v2, "gw-3", frame, seq=seq, at=at)
        store_window(writer, v2, "gw-1", make_machines(300, seed=8), seq=3, at=t0 + 460)
        assert evaluator.evaluate(now=t0 + 470) == []
        against_training, _ = score_drift(merge_counts(window_counts(v2, f) for f in later), v2, min_count=100)
        assert any(score.drifted for score in against_training.values())  # what the baseline keeps quiet

        # The dashboard shows the verdict against the baseline, and both references on the device page.
        rows = {row["device_id"]: row for row in overview(store, registry, seconds=400, now=t0 + 470)["devices"]}
        assert rows["gw-3"]["worst_drift"]["reference"] == "baseline" and not rows["gw-3"]["worst_drift"]["drifted"]
        assert rows["gw-3"]["baseline"]["state"] == "ready" and rows["gw-3"]["baseline"]["reason"] == ACCEPTED
        assert rows["gw-1"]["worst_drift"]["reference"] == "training" and not rows["gw-1"]["worst_drift"]["drifted"]
        page = device_histograms(store, registry, "gw-3", seconds=400, now=t0 + 470)
        assert page["judged_against"] == "baseline" and page["model"] == "machine-failure/2"
        temperature = next(f for f in page["features"] if f["feature"] == "temperature_c")
        assert len(temperature["baseline"]) == len(temperature["reference"]) == len(temperature["current"])
        assert temperature["drift"]["psi"] > 0.25 > temperature["drift_baseline"]["psi"]

        # A new change on gw-3 still fires, against its baseline: pressure up by 1.5 bar.
        changed = _drifted(1200, seed=9)
        changed["pressure_bar"] = changed["pressure_bar"] + 1.5
        store_window(writer, v2, "gw-3", changed, seq=6, at=t0 + 700)
        fired = evaluator.evaluate(now=t0 + 710)
        assert [a["subject"] for a in fired] == ["gw-3/pressure_bar"], fired
        assert "against its baseline of 600 records" in fired[0]["message"]


def test_a_fleet_capped_reference_keeps_healthy_devices_calm(rf_bundle) -> None:
    """v2 trained on the original readings plus gw-3's 1,000 drifted feedback rows: as they are, a healthy device
    drifts against its reference (the beta firmware it never had); capped at 4 % of the original rows, it does not."""
    bundle = load_bundle(rf_bundle.bundle).manifest
    original = make_machines(6000, seed=7)
    feedback = make_machines(1000, seed=3, drift=True).assign(device_id="gw-3")
    uncapped = reference_manifest(bundle, pd.concat([original, feedback.drop(columns="device_id")], ignore_index=True))
    kept, mixture = fleet_sample(feedback, len(original), max_device_share=0.04)
    assert len(kept) == 240 and mixture.cap_rows == 240
    assert [(p.source, p.received, p.kept) for p in mixture.parts] == [("original", 6000, 6000), ("gw-3", 1000, 240)]
    capped = reference_manifest(bundle, pd.concat([original, kept.drop(columns="device_id")], ignore_index=True))

    healthy = window_counts(uncapped, make_machines(3000, seed=77))
    assert score_drift(healthy, uncapped)[0]["firmware"].drifted  # the demo's gw-1 and gw-2 before the cap
    for records, seed in ((300, 78), (3000, 79), (20000, 80)):
        scores, _ = score_drift(window_counts(capped, make_machines(records, seed=seed)), capped)
        assert not any(score.drifted for score in scores.values()), (records, scores)
    drifted, _ = score_drift(window_counts(capped, make_machines(300, seed=81, drift=True)), capped)
    assert drifted["temperature_c"].drifted  # gw-3's drift is still drift against the fleet's reference


def test_the_dashboard_shows_both_references_after_an_accepted_drift(
    broker, rf_bundle, logreg_bundle_v2, tmp_path: Path
) -> None:
    """Headless Chromium on the real app: the device page of gw-3 shows the acceptance, the three bars (training
    reference, baseline, current) and judges against the baseline; the fleet row says so; the alert page shows
    the resolution."""
    from tests.loop_helpers import CloudServer
    from tests.test_dashboard import CHROMIUM, chart_drawn, dashboard_page

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)")
    cloud = CloudServer(broker, tmp_path, rf_bundle, [rf_bundle.bundle, logreg_bundle_v2.bundle])
    v1, v2 = cloud.registry.manifest("machine-failure", 1), cloud.registry.manifest("machine-failure", 2)
    assert v1 is not None and v2 is not None
    now = time.time()
    try:
        writer = IngestWriter(cloud.store)
        evaluator = AlertEvaluator(cloud.store, cloud.registry, [RULE], baseline_records=500)
        store_window(writer, v1, "gw-3", _drifted(300, seed=1), seq=1, at=now - 300)
        assert evaluator.evaluate(now=now - 290)
        _promote_in_shadow(cloud.store, at=now - 250)
        evaluator.evaluate(now=now - 240)
        for seq, at in ((2, now - 200), (3, now - 150), (4, now - 60)):
            store_window(writer, v2, "gw-3", _drifted(300, seed=seq + 10), seq=seq, at=at)
        store_window(writer, v2, "gw-1", make_machines(300, seed=5), seq=1, at=now - 60)
        assert evaluator.evaluate(now=now - 50) == []
        with dashboard_page(cloud) as (page, problems, _external):
            page.goto(cloud.url + "/dashboard")
            page.wait_for_selector("text=Token needed")
            page.fill("#token", "look")
            page.click("#token-form button")
            page.wait_for_selector("tr[data-device='gw-3'] td.drift .reference")
            assert "vs its baseline" in page.inner_text("tr[data-device='gw-3'] td.drift")
            assert "drifted" not in page.inner_text("tr[data-device='gw-3'] td.drift").replace("not drifted", "")
            page.goto(cloud.url + "/dashboard#/device/gw-3")
            page.wait_for_selector("#baseline-note .baseline-state")
            note = page.inner_text("#baseline-note")
            assert "Baseline ready" in note and ACCEPTED in note and "600 records" in note, note
            assert page.inner_text("#judged-against") == "the baseline"
            drawn = chart_drawn(page, "h-0")
            assert [label for label, _ in drawn["datasets"]] == ["reference", "baseline", "current"]
            assert drawn["colours"].get("#6bb38a", 0) >= 20, drawn["colours"]  # the baseline's bars are drawn
            page.screenshot(path=str(tmp_path / "device-baseline.png"), full_page=True)
            page.goto(cloud.url + "/dashboard#/alerts")
            page.select_option("#alert-state", "resolved")
            page.wait_for_selector("#alerts .resolution")
            assert ACCEPTED in page.inner_text("#alerts .resolution")
            assert problems == [], problems
    finally:
        cloud.stop()


def test_the_champions_windows_after_an_acceptance_are_accepted_too() -> None:
    """A fresh-clone `make demo` re-fired gw-3's three drift alerts 50 ms after the acceptance resolved them: a v1
    window that ended after the promotion (the device was still switching) was judged against v1's training
    reference. Such windows are part of the accepted drift; a later version is judged on its own reference."""
    baseline = Baseline("gw-3", "machine-failure", 2, accepted_at=1000.0, reason="accepted")
    counts = WindowCounts(records=10, requests=10)

    def role(version: int, end: float) -> str:
        return baseline.role(WindowRecord("gw-3", "plant-a", "machine-failure", version, end, counts))

    assert role(1, 999.0) == "before"
    assert role(1, 1001.0) == "before"  # the champion's tail, after the promotion
    assert role(2, 1001.0) == "baseline"  # forming
    assert role(3, 1001.0) == "training"  # a later version: its own training reference
