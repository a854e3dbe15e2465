"""What a rollout shows (`Rollouts.status`, `recent`, `latest`, the API and the dashboard): its row in public
form, each device of its group (or, for polling a group of thousands, only the counts by one aggregate query),
and for an A/B rollout the per-arm requests, failures, records and accuracy.
"""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa

from cloud_sync.fleet.stats import device_list
from cloud_sync.rollouts.checks import ab_comparison
from cloud_sync.store import audit
from cloud_sync.store.db import Store, devices

__all__ = ["on_target", "public", "report"]


def report(
    store: Store, row: dict[str, Any], per_device: bool = True, last_ab: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The rollout and each device of its group; `per_device=False`: only the counts `group_devices` and
    `on_target`, and `last_ab` (the controller's last per-arm report of an A/B rollout) as `ab`."""
    result = public(row)
    if not per_device:
        if last_ab is not None:  # the last tick's per-arm report: polling reads no windows
            result["ab"] = last_ab
        result["group_devices"], result["on_target"] = on_target(store, row)
        return result
    if result["mode"] == "ab" and row["previous_version"] is not None:
        end = row["finished_at"] or time.time()
        result["ab"] = ab_comparison(
            store, row["group_name"], row["canary"], row["model_name"], row["previous_version"],
            row["model_version"], row["created_at"], end,
        )  # fmt: skip
    members = device_list(store, row["group_name"])
    target = (row["model_name"], row["model_version"])
    result["devices"] = [
        {
            "device_id": d["device_id"],
            "canary": d["device_id"] in row["canary"],
            "online": d["online"],
            "model_version": d["model_version"],
            "on_target": (d["model_name"], d["model_version"]) == target,
            "state": d["state"],
            "last_error": d["last_error"],
        }
        for d in members
    ]
    result["on_target"] = sum(1 for d in result["devices"] if d["on_target"])
    return result


def on_target(store: Store, row: dict[str, Any]) -> tuple[int, int]:
    """(devices in the group, how many of them report the rollout's version): one query."""
    c = devices.c
    hit = sa.case(((c.model_name == row["model_name"]) & (c.model_version == row["model_version"]), 1), else_=0)
    query = sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(hit), 0)).where(c.group_name == row["group_name"])
    with store.engine.connect() as conn:
        total, on = conn.execute(query).one()
    return int(total), int(on)


def public(row: dict[str, Any]) -> dict[str, Any]:
    """A `rollouts` row as the API shows it (times in ISO 8601)."""
    return {
        "id": row["id"],
        "group": row["group_name"],
        "model": f"{row['model_name']}/{row['model_version']}",
        "model_name": row["model_name"],
        "model_version": row["model_version"],
        "previous_version": row["previous_version"],
        "canary": row["canary"],
        "soak_s": row["soak_s"],
        "state": row["state"],
        "reason": row["reason"],
        "actor": row["actor"],
        "created_at": audit.iso(row["created_at"]),
        "soak_started_at": audit.iso(row["soak_started_at"]),
        "finished_at": audit.iso(row["finished_at"]),
        "mode": row.get("mode") or "serving",
    }
