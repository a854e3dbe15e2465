"""Fleet queries: devices and their state, and telemetry statistics over any period, per device or per group.

Statistics are always computed from merged counts (`merge_counts` over the windows whose end falls in
(start, end]), never by averaging the scores devices computed: request rate, error rate, p50/p99 latency
(upper bound of the histogram bucket, like Prometheus), accuracy from the merged confusion counts, and PSI /
Jensen-Shannon drift per feature from the merged bin counts against the manifest of that model version
(feature bins only line up within one version, so drift is reported per version).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from cloud_sync.store.audit import iso
from cloud_sync.store.bundles import BundleRegistry
from cloud_sync.store.db import Store, dead_letters, devices, gaps, windows
from contracts.telemetry import WindowCounts, merge_counts, score_drift

__all__ = ["WindowRecord", "dead_letter_list", "device_list", "gap_list", "load_windows", "stats", "summarize"]


@dataclass(frozen=True)
class WindowRecord:
    device_id: str
    group: str
    model_name: str | None
    model_version: int | None
    window_end: float
    counts: WindowCounts


def device_list(
    store: Store, group: str | None = None, now: float | None = None, online_timeout_s: float = 120.0
) -> list[dict[str, Any]]:
    """Every known device: last seen, online (status says so and it was heard from recently), model, state."""
    now = time.time() if now is None else now
    query = sa.select(devices).order_by(devices.c.device_id)
    if group:
        query = query.where(devices.c.group_name == group)
    with store.engine.connect() as conn:
        rows = conn.execute(query).mappings().all()
    result = []
    for row in rows:
        recent = now - row["last_seen"] <= online_timeout_s
        online = bool(row["online"]) and recent if row["online"] is not None else recent
        result.append(
            {
                "device_id": row["device_id"],
                "group": row["group_name"],
                "online": online,
                "last_seen": iso(row["last_seen"]),
                "last_seen_s_ago": round(now - row["last_seen"], 3),
                "model_name": row["model_name"],
                "model_version": row["model_version"],
                "bundle_sha256": row["bundle_sha256"],
                "state": row["state"],
                "last_error": row["last_error"],
                "agent_version": row["agent_version"],
                "unacknowledged": row["unacknowledged"],
                "unacknowledged_oldest_s": row["unacknowledged_oldest_s"],
                "unacknowledged_reported_at": iso(row["unacknowledged_at"]),
                "labels": row["labels"] or {},
                "clock_offset_s": row["clock_offset_s"],
                "clock_offset_at": iso(row["clock_offset_at"]),
            }
        )
    return result


def load_windows(
    store: Store,
    start: float,
    end: float,
    group: str | None = None,
    device: str | Iterable[str] | None = None,
    model_version: int | None = None,
) -> list[WindowRecord]:
    """Windows whose end lies in (start, end], optionally for one group, device(s) or model version."""
    c = windows.c
    query = sa.select(c.device_id, c.group_name, c.model_name, c.model_version, c.window_end, c.payload).where(
        c.window_end > start, c.window_end <= end
    )
    if group:
        query = query.where(c.group_name == group)
    if isinstance(device, str):
        query = query.where(c.device_id == device)
    elif device is not None:
        query = query.where(c.device_id.in_(list(device)))
    if model_version is not None:
        query = query.where(c.model_version == model_version)
    with store.engine.connect() as conn:
        rows = conn.execute(query.order_by(c.window_end)).all()
    return [
        WindowRecord(
            row.device_id,
            row.group_name,
            row.model_name,
            row.model_version,
            row.window_end,
            WindowCounts.model_validate_json(row.payload),
        )
        for row in rows
    ]


def summarize(
    records: list[WindowRecord], seconds: float, registry: BundleRegistry | None = None, min_count: int = 1
) -> dict[str, Any]:
    """Merged statistics of a set of windows; drift per model version when its manifest is known."""
    total = merge_counts(record.counts for record in records)
    errors = sum(total.errors.values())
    p50, p99 = total.latency_quantile(0.5), total.latency_quantile(0.99)
    summary: dict[str, Any] = {
        "windows": len(records),
        "devices": len({record.device_id for record in records}),
        "requests": total.requests,
        "records": total.records,
        "request_rate_per_s": total.requests / seconds if seconds > 0 else None,
        "errors": dict(total.errors),
        "error_rate": errors / total.requests if total.requests else None,
        "latency_p50_s": None if p50 is None or p50 == float("inf") else p50,
        "latency_p99_s": None if p99 is None or p99 == float("inf") else p99,
        "latency_mean_s": total.latency_sum / sum(total.latency_counts) if sum(total.latency_counts) else None,
        "feedback": total.feedback_count,
        "accuracy": total.accuracy,
        "versions": [],
    }
    by_version: dict[tuple[str | None, int | None], list[WindowRecord]] = defaultdict(list)
    for record in records:
        by_version[(record.model_name, record.model_version)].append(record)
    for (name, version), subset in sorted(by_version.items(), key=lambda item: str(item[0])):
        merged = merge_counts(record.counts for record in subset)
        entry: dict[str, Any] = {
            "model_name": name,
            "model_version": version,
            "windows": len(subset),
            "requests": merged.requests,
            "feedback": merged.feedback_count,
            "accuracy": merged.accuracy,
            "drift": None,
            "prediction_drift": None,
        }
        manifest = registry.manifest(name, version) if registry is not None else None
        if manifest is not None:
            drift, prediction = score_drift(merged, manifest, min_count=min_count)
            entry["drift"] = {feature: score.model_dump() for feature, score in drift.items()}
            entry["prediction_drift"] = prediction.model_dump() if prediction else None
        summary["versions"].append(entry)
    return summary


def stats(
    store: Store,
    start: float,
    end: float,
    registry: BundleRegistry | None = None,
    group: str | None = None,
    device: str | None = None,
    per_device: bool = False,
) -> dict[str, Any]:
    """Fleet statistics over (start, end]: the whole selection, and each device when `per_device`."""
    records = load_windows(store, start, end, group, device)
    seconds = end - start
    result: dict[str, Any] = {"start": iso(start), "end": iso(end), "group": group, "device": device}
    result["total"] = summarize(records, seconds, registry)
    if per_device:
        by_device: dict[str, list[WindowRecord]] = defaultdict(list)
        for record in records:
            by_device[record.device_id].append(record)
        result["devices"] = {name: summarize(subset, seconds, registry) for name, subset in sorted(by_device.items())}
    return result


def gap_list(store: Store, device: str | None = None, open_only: bool = True) -> list[dict[str, Any]]:
    """Recorded sequence gaps; open ones still miss at least one message."""
    query = sa.select(gaps).order_by(gaps.c.id)
    if device:
        query = query.where(gaps.c.device_id == device)
    with store.engine.connect() as conn:
        rows = conn.execute(query).mappings().all()
    result = []
    for row in rows:
        missing = row["last_missing"] - row["first_missing"] + 1 - row["filled"]
        if open_only and missing <= 0:
            continue
        result.append(
            {
                "device_id": row["device_id"],
                "stream": row["stream"],
                "epoch": row["epoch"],
                "first_missing": row["first_missing"],
                "last_missing": row["last_missing"],
                "still_missing": missing,
                "detected_at": iso(row["detected_at"]),
            }
        )
    return result


def dead_letter_list(store: Store, limit: int = 100) -> dict[str, Any]:
    with store.engine.connect() as conn:
        count = conn.execute(sa.select(sa.func.count()).select_from(dead_letters)).scalar_one()
        rows = conn.execute(sa.select(dead_letters).order_by(dead_letters.c.id.desc()).limit(limit)).mappings().all()
    return {
        "count": count,
        "latest": [
            {
                "topic": row["topic"],
                "reason": row["reason"],
                "received_at": iso(row["received_at"]),
                "payload": row["payload"][:500].decode("utf-8", "replace"),
            }
            for row in rows
        ],
    }
