"""The dashboard's read models, computed from the store like `cloud_sync.fleet.stats` (merged counts, never averaged
scores): the fleet overview rows, a device's time series and histograms, its recent events, and the models
page (versions, lineage, model card, permutation importance and per-prediction explanation availability
(`cloud_sync.loop.governance`), where each version runs, live accuracy per version).
"""

from __future__ import annotations

import itertools
import time
from collections import defaultdict
from typing import Any

import sqlalchemy as sa

from cloud_sync.alerts.queries import alert_list
from cloud_sync.fleet.stats import WindowRecord, device_list, load_windows
from cloud_sync.loop.baselines import (
    Baseline,
    Baselines,
    DriftReference,
    drift_reference,
    judged_windows,
    load_baselines,
)
from cloud_sync.loop.governance import explanations
from cloud_sync.store.audit import iso
from cloud_sync.store.bundles import BundleRegistry
from cloud_sync.store.db import Store, devices, events
from contracts.drift import UNSEEN, psi_band
from contracts.manifest import CategoricalProfile, Manifest, NumericProfile
from contracts.telemetry import CategoricalCounts, NumericCounts, WindowCounts, merge_counts, score_drift

__all__ = ["device_events", "device_histograms", "device_series", "groups", "models", "overview"]

_SEVERITY = {"info": 1, "warning": 2, "critical": 3}


def _finite(value: float | None) -> float | None:
    return None if value is None or value == float("inf") else value


def _latest_version(records: list[WindowRecord]) -> list[WindowRecord]:
    """The windows of the model version a device reported last (feature bins only line up within one)."""
    if not records:
        return []
    last = max(records, key=lambda r: r.window_end)
    return [r for r in records if (r.model_name, r.model_version) == (last.model_name, last.model_version)]


def _drift(
    merged: WindowCounts, manifest: Manifest | None, min_count: int = 1, reference_records: int | None = None
) -> dict[str, dict[str, Any]]:
    if manifest is None:
        return {}
    scores, _ = score_drift(merged, manifest, min_count=min_count, reference_records=reference_records)
    return {name: score.model_dump() for name, score in scores.items()}


def _reference(registry: BundleRegistry, baselines: Baselines, records: list[WindowRecord]) -> DriftReference | None:
    """What the device's (judged, one-version) windows are compared with: its baseline or the training reference."""
    if not records:
        return None
    first = records[0]
    manifest = registry.manifest(first.model_name, first.model_version)
    if manifest is None:
        return None
    return drift_reference(baselines, first.device_id, first.model_name, first.model_version, manifest)


def _baseline_info(baseline: Baseline | None) -> dict[str, Any] | None:
    if baseline is None:
        return None
    return {
        "model": f"{baseline.model_name}/{baseline.model_version}",
        "state": "ready" if baseline.ready else "forming",
        "accepted_at": iso(baseline.accepted_at),
        "ready_at": iso(baseline.ready_at),
        "records": baseline.records,
        "reason": baseline.reason,
    }


def _alerts_by_device(store: Store) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for alert in alert_list(store, "firing"):
        found[alert["subject"].split("/", 1)[0]].append(alert)
    return found


def groups(store: Store) -> list[str]:
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(devices.c.group_name).distinct().order_by(devices.c.group_name)).all()
    return [row.group_name for row in rows if row.group_name]


def overview(
    store: Store,
    registry: BundleRegistry,
    seconds: float = 900.0,
    group: str | None = None,
    online_timeout_s: float = 120.0,
    now: float | None = None,
) -> dict[str, Any]:
    """One row per device: state, model, rates, p99, worst drift and accuracy over the last `seconds`."""
    now = time.time() if now is None else now
    known = device_list(store, group, now, online_timeout_s)
    by_device: dict[str, list[WindowRecord]] = defaultdict(list)
    for record in load_windows(store, now - seconds, now, group):
        by_device[record.device_id].append(record)
    firing = _alerts_by_device(store)
    baselines = load_baselines(store)
    rows = []
    for device in known:
        records = by_device.get(device["device_id"], [])
        merged = merge_counts(r.counts for r in records)
        current = _latest_version(judged_windows(records, baselines))
        model_name = current[0].model_name if current else device["model_name"]
        reference = _reference(registry, baselines, current)
        drift = (
            _drift(merge_counts(r.counts for r in current), reference.manifest, reference_records=reference.records)
            if reference
            else {}
        )
        worst = max(drift.items(), key=lambda item: (bool(item[1]["drifted"]), item[1]["psi"]), default=None)
        alerts = firing.get(device["device_id"], [])
        severity = max((a["severity"] for a in alerts), key=lambda s: _SEVERITY.get(s, 0), default=None)
        errors = sum(merged.errors.values())
        rows.append(
            {
                **device,
                "windows": len(records),
                "last_window_end": iso(max((r.window_end for r in records), default=None)),
                "requests": merged.requests,
                "request_rate_per_s": merged.requests / seconds if seconds > 0 else None,
                "error_rate": errors / merged.requests if merged.requests else None,
                "latency_p99_s": _finite(merged.latency_quantile(0.99)),
                "accuracy": merged.accuracy,
                "feedback": merged.feedback_count,
                "worst_drift": (
                    {
                        "feature": worst[0],
                        "psi": worst[1]["psi"],
                        "band": worst[1]["band"],
                        "p_value": worst[1]["p_adjusted"],
                        "drifted": worst[1]["drifted"],
                        "count": worst[1]["count"],
                        "reference": reference.kind if reference else None,
                    }
                    if worst
                    else None
                ),
                "alerts": [{"id": a["id"], "rule": a["rule"], "severity": a["severity"]} for a in alerts],
                "alert_severity": severity,
                "baseline": _baseline_info(baselines.get((device["device_id"], model_name or ""))),
            }
        )
    return {"generated_at": iso(now), "seconds": seconds, "group": group, "groups": groups(store), "devices": rows}


def device_series(
    store: Store,
    registry: BundleRegistry,
    device: str,
    seconds: float = 3600.0,
    buckets: int = 40,
    now: float | None = None,
) -> dict[str, Any]:
    """Time buckets over the period: request rate, p50/p99 latency, error rate, accuracy and PSI per feature."""
    now = time.time() if now is None else now
    start = now - seconds
    records = load_windows(store, start, now, device=device)
    width = seconds / buckets
    slots: dict[int, list[WindowRecord]] = defaultdict(list)
    for record in records:
        slots[min(buckets - 1, int((record.window_end - start) // width))].append(record)
    series: dict[str, Any] = {
        "t": [],
        "requests_per_s": [],
        "latency_p50_s": [],
        "latency_p99_s": [],
        "error_rate": [],
        "accuracy": [],
        "psi": defaultdict(list),
    }
    features: set[str] = set()
    points = []
    baselines = load_baselines(store)
    for index in sorted(slots):
        subset = slots[index]
        merged = merge_counts(r.counts for r in subset)
        current = _latest_version(subset)
        judged = judged_windows(current, baselines)  # after an acceptance: against the baseline once it is ready
        reference = _reference(registry, baselines, judged if len(judged) == len(current) else [])
        manifest = (
            reference.manifest if reference else registry.manifest(current[0].model_name, current[0].model_version)
        )
        drift = _drift(
            merge_counts(r.counts for r in current),
            manifest,
            reference_records=reference.records if reference else None,
        )
        features.update(drift)
        points.append((start + (index + 1) * width, merged, drift))
    for end, merged, drift in points:
        series["t"].append(iso(end))
        series["requests_per_s"].append(merged.requests / width)
        series["latency_p50_s"].append(_finite(merged.latency_quantile(0.5)))
        series["latency_p99_s"].append(_finite(merged.latency_quantile(0.99)))
        series["error_rate"].append(sum(merged.errors.values()) / merged.requests if merged.requests else None)
        series["accuracy"].append(merged.accuracy)
        for feature in sorted(features):
            score = drift.get(feature)
            series["psi"][feature].append(score["psi"] if score else None)
    series["psi"] = dict(series["psi"])
    return {"device": device, "start": iso(start), "end": iso(now), "bucket_s": width, "series": series}


def device_histograms(
    store: Store, registry: BundleRegistry, device: str, seconds: float = 3600.0, now: float | None = None
) -> dict[str, Any]:
    """Per feature: the reference distribution (manifest profile) and the current one (merged window counts)."""
    now = time.time() if now is None else now
    baselines = load_baselines(store)
    current = _latest_version(judged_windows(load_windows(store, now - seconds, now, device=device), baselines))
    if not current:
        return {"device": device, "model": None, "features": []}
    manifest = registry.manifest(current[0].model_name, current[0].model_version)
    merged = merge_counts(r.counts for r in current)
    model = f"{current[0].model_name}/{current[0].model_version}"
    if manifest is None:
        return {"device": device, "model": model, "features": []}
    drift = _drift(merged, manifest)
    compared = drift_reference(baselines, device, current[0].model_name, current[0].model_version, manifest)
    against_baseline = _drift(merged, compared.manifest, reference_records=compared.records)
    features = []
    for name, profile in manifest.reference_profile.items():
        observed = merged.features.get(name)
        entry: dict[str, Any] = {"feature": name, "kind": profile.kind, "drift": drift.get(name)}
        if compared.kind == "baseline":  # the device's own accepted distribution, beside the training one
            entry["drift_baseline"] = against_baseline.get(name)
            entry["baseline"] = _proportions(compared.manifest.reference_profile[name])
        if isinstance(profile, NumericProfile):
            edges = profile.bin_edges
            labels = [f"≤{edges[0]:.4g}"] if edges else ["all"]
            labels += [f"{a:.4g}–{b:.4g}" for a, b in itertools.pairwise(edges)]
            labels += [f">{edges[-1]:.4g}"] if edges else []
            counts = observed.bins if isinstance(observed, NumericCounts) else []
            entry["missing"] = observed.missing if isinstance(observed, NumericCounts) else 0
            entry["out_of_range"] = observed.out_of_range if isinstance(observed, NumericCounts) else 0
            reference = list(profile.proportions)
        elif isinstance(profile, CategoricalProfile):
            labels = [*profile.frequencies, "__unseen__"]
            reference = [profile.frequencies.get(key, 0.0) for key in labels]
            table = observed.counts if isinstance(observed, CategoricalCounts) else {}
            counts = [table.get(key, 0) for key in labels]
            entry["missing"] = observed.missing if isinstance(observed, CategoricalCounts) else 0
        else:  # pragma: no cover - the manifest's union has two kinds
            continue
        total = sum(counts)
        entry["labels"] = labels
        entry["reference"] = reference
        entry["current"] = [c / total for c in counts] if total else [0.0] * len(labels)
        entry["count"] = total
        features.append(entry)
    judged = "drift_baseline" if compared.kind == "baseline" else "drift"
    features.sort(key=lambda f: -(f[judged] or {}).get("psi", 0.0))
    return {
        "device": device,
        "model": model,
        "records": merged.records,
        "judged_against": compared.kind,
        "baseline": _baseline_info(baselines.get((device, current[0].model_name or ""))),
        "features": features,
    }


def _proportions(profile: NumericProfile | CategoricalProfile) -> list[float]:
    """A profile's shares in the order the histograms label them (categories then `__unseen__`)."""
    if isinstance(profile, NumericProfile):
        return list(profile.proportions)
    unseen = [] if UNSEEN in profile.frequencies else [0.0]  # a baseline holds it already, last
    return [*profile.frequencies.values(), *unseen]


def device_events(store: Store, device: str, limit: int = 50) -> list[dict[str, Any]]:
    query = sa.select(events).where(events.c.device_id == device).order_by(events.c.id.desc()).limit(limit)
    with store.engine.connect() as conn:
        rows = conn.execute(query).mappings().all()
    return [
        {
            "seq": row["seq"],
            "kind": row["kind"],
            "model": f"{row['model_name']}/{row['model_version']}" if row["model_name"] else None,
            "reason": row["reason"],
            "details": row["details"],
            "at": row["at"],
            "received_at": iso(row["received_at"]),
        }
        for row in rows
    ]


def _model_card(manifest: Manifest) -> dict[str, Any]:
    lineage = manifest.lineage
    return {
        "intended_use": f"Predict `{manifest.target}` ({', '.join(map(str, manifest.classes))}) from "
        f"{len(manifest.inputs)} features on devices (edge agent) and in batch scoring.",
        "estimator": lineage.estimator,
        "target": manifest.target,
        "classes": manifest.classes,
        "inputs": [{"name": s.name, "kind": s.kind, "categories": s.categories} for s in manifest.inputs],
        "data": {"source": lineage.data_source, "sha256": lineage.data_hash, "rows": lineage.data_rows},
        "prediction_profile": manifest.prediction_profile,
        "parity": manifest.parity.model_dump(),
        "golden_samples": len(manifest.golden_samples),
        "onnx": {"sha256": manifest.onnx.sha256, "size": manifest.onnx.size, "opset": manifest.onnx.opset},
        "limitations": [
            "Trained on one snapshot of data; watch the PSI per feature reported by the fleet.",
            "Categories not seen in training contribute nothing and are counted as unseen.",
            "Probabilities are not calibrated beyond what the estimator provides.",
        ],
    }


def models(
    store: Store, registry: BundleRegistry, seconds: float = 86400.0, online_timeout_s: float = 120.0
) -> list[dict[str, Any]]:
    """Each model name: its versions (metrics, lineage, card, explanations), the devices running each, live
    accuracy."""
    now = time.time()
    running: dict[tuple[str, int], list[str]] = defaultdict(list)
    for device in device_list(store, None, now, online_timeout_s):
        if device["model_name"] and device["model_version"] is not None:
            running[(device["model_name"], device["model_version"])].append(device["device_id"])
    live: dict[tuple[str | None, int | None], list[WindowRecord]] = defaultdict(list)
    for record in load_windows(store, now - seconds, now):
        live[(record.model_name, record.model_version)].append(record)
    names: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for info in registry.all():
        m = info.manifest
        merged = merge_counts(r.counts for r in live.get((m.name, m.version), []))
        drift = _drift(merged, m, min_count=1)
        worst = max(drift.values(), key=lambda score: score["psi"], default=None)
        names[m.name].append(
            {
                "version": m.version,
                "created_at": m.created_at,
                "estimator": m.lineage.estimator,
                "metrics": m.lineage.metrics,
                "lineage": {
                    "run_id": m.lineage.run_id,
                    "registered_model": m.lineage.registered_model,
                    "model_version": m.lineage.model_version,
                    "data_hash": m.lineage.data_hash,
                    "data_rows": m.lineage.data_rows,
                    "data_source": m.lineage.data_source,
                    "code_version": m.lineage.code_version,
                },
                "devices": sorted(running.get((m.name, m.version), [])),
                "live": {
                    "windows": len(live.get((m.name, m.version), [])),
                    "requests": merged.requests,
                    "feedback": merged.feedback_count,
                    "accuracy": merged.accuracy,
                    "worst_psi": worst["psi"] if worst else None,
                    "worst_band": psi_band(worst["psi"]) if worst else None,
                },
                "card": _model_card(m),
                "explanations": explanations(m).model_dump(mode="json"),
            }
        )
    return [
        {"name": name, "versions": sorted(versions, key=lambda v: -v["version"])}
        for name, versions in sorted(names.items())
    ]
