"""Drift test helpers shared by the drift tests: a manifest whose reference is built from given readings (as the
trainer builds it), the counts a device would report for readings, and storing them as a real telemetry window
through the ingest writer."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cloud_sync.fleet.simulator import iso_utc
from cloud_sync.ingest.writer import Incoming, IngestWriter
from contracts.drift import bin_counts, categorical_profile, numeric_profile
from contracts.manifest import CategoricalProfile, Manifest, NumericProfile
from contracts.telemetry import CategoricalCounts, NumericCounts, TelemetryWindow, WindowCounts
from contracts.topics import device_topic

__all__ = ["CATEGORICAL", "NUMERIC", "reference_manifest", "store_window", "window_counts"]

NUMERIC = ["temperature_c", "vibration_mm_s", "pressure_bar", "rpm", "power_kw", "hours_since_service"]
CATEGORICAL = ["machine_type", "firmware", "site"]


def reference_manifest(bundle: Manifest, rows: pd.DataFrame) -> Manifest:
    """`bundle` with its reference profile built from `rows` (the trainer's profile functions)."""
    profile: dict[str, NumericProfile | CategoricalProfile] = {}
    for name in NUMERIC:
        profile[name] = numeric_profile(rows[name].to_numpy(dtype=float))
    for name in CATEGORICAL:
        profile[name] = categorical_profile(list(rows[name].where(rows[name].notna(), None)))
    return bundle.model_copy(update={"reference_profile": profile, "prediction_profile": {}})


def window_counts(manifest: Manifest, frame: pd.DataFrame) -> WindowCounts:
    """The counts a device would report for these readings, on the manifest's reference bins."""
    counts = WindowCounts(records=len(frame), requests=len(frame))
    for name, reference in manifest.reference_profile.items():
        if isinstance(reference, NumericProfile):
            bins, missing = bin_counts(np.asarray(reference.bin_edges), frame[name].to_numpy(dtype=float))
            counts.features[name] = NumericCounts(bins=[int(b) for b in bins], missing=missing)
        else:
            values = frame[name].dropna().astype(str)
            known = values.where(values.isin(list(reference.frequencies)), "__unseen__")
            counts.features[name] = CategoricalCounts(
                counts={str(k): int(v) for k, v in known.value_counts().items()}, missing=int(frame[name].isna().sum())
            )
    return counts


def store_window(
    writer: IngestWriter,
    manifest: Manifest,
    device: str,
    frame: pd.DataFrame,
    *,
    seq: int,
    at: float,
    group: str = "g",
    seconds: float = 60.0,
) -> None:
    """One telemetry window of `device` on `manifest`'s version, ending at `at`, stored by the real ingest writer."""
    window = TelemetryWindow(
        **window_counts(manifest, frame).model_dump(),
        device_id=device,
        group=group,
        seq=seq,
        window_start=iso_utc(at - seconds),
        window_end=iso_utc(at),
        agent_version="test",
        model_name=manifest.name,
        model_version=manifest.version,
    )
    writer.write([Incoming(device_topic(device, "telemetry"), window.model_dump_json().encode(), at)])
