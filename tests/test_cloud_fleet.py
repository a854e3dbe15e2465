"""Fleet queries merge the windows' counts exactly (the same as merge_counts + score_drift on those windows)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from cloud_sync.fleet.simulator import make_window
from cloud_sync.fleet.stats import stats
from cloud_sync.ingest.writer import Incoming, IngestWriter
from cloud_sync.store.bundles import BundleRegistry
from cloud_sync.store.db import Store
from contracts.signing import load_public_key
from contracts.telemetry import TelemetryWindow, merge_counts, score_drift
from contracts.topics import device_topic
from tests.cloud_support import make_store
from tests.conftest import TrainedBundle


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    with make_store(request.param, tmp_path) as instance:
        yield instance


def test_fleet_statistics_are_merged_counts(store: Store, rf_bundle: TrainedBundle, tmp_path: Path) -> None:
    registry = BundleRegistry(tmp_path / "bundles", load_public_key(rf_bundle.public_key))
    manifest = registry.add(rf_bundle.bundle).manifest
    rng = np.random.default_rng(3)
    now = time.time()
    start, end = now - 3600, now
    sent: list[TelemetryWindow] = []
    plan = [("a1", "A", 0.0, 0.002, 0.9), ("a2", "A", 0.6, 0.03, 0.6), ("b1", "B", 0.0, 0.2, 0.8)]
    for device, group, shift, latency, accuracy in plan:
        for seq in range(1, 13):
            window_end = start + seq * 300 - (7200 if seq == 1 else 0)  # the first window is outside the period
            requests = int(rng.integers(20, 200))
            sent.append(
                make_window(
                    device,
                    group,
                    seq,
                    window_end,
                    manifest,
                    rng,
                    requests=requests,
                    errors=int(rng.integers(0, 3)),
                    latency_s=latency * (1 + seq % 3),
                    shift=shift,
                    accuracy=accuracy,
                    feedback=10,
                    seconds=300,
                )
            )
    writer = IngestWriter(store)
    writer.write([Incoming(device_topic(w.device_id, "telemetry"), w.model_dump_json().encode(), now) for w in sent])

    def expected(windows: list[TelemetryWindow]) -> tuple[object, ...]:
        merged = merge_counts(windows)
        drift, prediction = score_drift(merged, manifest)
        return (
            merged.requests,
            sum(merged.errors.values()) / merged.requests,
            merged.latency_quantile(0.5),
            merged.latency_quantile(0.99),
            merged.accuracy,
            {name: score.psi for name, score in drift.items()},
            prediction.psi if prediction else None,
        )

    def observed(summary: dict) -> tuple[object, ...]:
        [version] = summary["versions"]
        return (
            summary["requests"],
            summary["error_rate"],
            summary["latency_p50_s"],
            summary["latency_p99_s"],
            summary["accuracy"],
            {name: score["psi"] for name, score in version["drift"].items()},
            version["prediction_drift"]["psi"],
        )

    in_period = [w for w in sent if w.seq > 1]
    group_a = stats(store, start, end, registry, group="A", per_device=True)
    assert observed(group_a["total"]) == expected([w for w in in_period if w.group == "A"])
    assert group_a["total"]["windows"] == 22 and group_a["total"]["devices"] == 2
    for device in ("a1", "a2"):
        assert observed(group_a["devices"][device]) == expected([w for w in in_period if w.device_id == device])
    everything = stats(store, start, end, registry)
    assert observed(everything["total"]) == expected(in_period)
    assert everything["total"]["request_rate_per_s"] == pytest.approx(sum(w.requests for w in in_period) / 3600)
    # The shifted device drifts, the other one does not; a period in the past sees only the early windows.
    drift_a2 = group_a["devices"]["a2"]["versions"][0]["drift"]
    drift_a1 = group_a["devices"]["a1"]["versions"][0]["drift"]
    assert max(s["psi"] for s in drift_a2.values()) > 0.25 > max(s["psi"] for s in drift_a1.values())
    early = stats(store, start - 7000, start - 6800, registry, device="b1")
    assert early["total"]["windows"] == 1
    assert observed(early["total"]) == expected([w for w in sent if w.seq == 1 and w.device_id == "b1"])
