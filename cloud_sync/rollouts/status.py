"""What a rollout shows (`Rollouts.status`, `recent`, `latest`, the API and the dashboard): the rollout in
public form, each device of its group (or, for polling a group of thousands, only the counts by one aggregate
query), and what its mode reports beside them (an A/B rollout's per-arm requests, failures, records, accuracy).
"""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa

from cloud_sync.fleet.stats import device_list
from cloud_sync.rollouts import selectors
from cloud_sync.rollouts.model import Rollout
from cloud_sync.rollouts.modes.base import ModeView, RolloutMode
from cloud_sync.store import audit
from cloud_sync.store.db import Store, devices

__all__ = ["on_target", "public", "report"]


def report(
    view: ModeView,
    rollout: Rollout,
    mode: RolloutMode,
    *,
    per_device: bool = True,
    last_report: dict[str, Any] | None = None,
    stage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The rollout and each device of its group; `per_device=False`: only the counts `group_devices` and
    `on_target`, and `last_report` (what the mode reported at the controller's last tick) under its key.
    `stage`: a staged rollout's stage, its devices and its checks (`stages.report`)."""
    result = public(rollout)
    if stage is not None:
        result["stage"] = stage
    if not per_device:
        if last_report is not None:  # the last tick's report: polling reads no windows
            result[mode.name] = last_report
        result["group_devices"], result["on_target"] = on_target(view.store, rollout)
        return result
    extra = mode.report(view, rollout, rollout.finished_at or time.time())
    if extra is not None:
        result[mode.name] = extra
    members = _targets(view.store, rollout)
    target = (rollout.model_name, rollout.model_version)
    result["devices"] = [
        {
            "device_id": d["device_id"],
            "canary": d["device_id"] in rollout.canary,
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


def _targets(store: Store, rollout: Rollout) -> list[dict[str, Any]]:
    """The devices the rollout targets: its group's, narrowed by its selector if it has one."""
    members = device_list(store, rollout.group)
    if not rollout.selector:
        return members
    chosen = selectors.members(members, rollout.selector)
    return [d for d in members if d["device_id"] in chosen]


def on_target(store: Store, rollout: Rollout) -> tuple[int, int]:
    """(devices in the group (matching its selector), how many of them report the rollout's version): one query
    for a whole-group rollout."""
    if rollout.selector:
        members = _targets(store, rollout)
        target = (rollout.model_name, rollout.model_version)
        return len(members), sum(1 for d in members if (d["model_name"], d["model_version"]) == target)
    c = devices.c
    hit = sa.case(((c.model_name == rollout.model_name) & (c.model_version == rollout.model_version), 1), else_=0)
    query = sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(hit), 0)).where(c.group_name == rollout.group)
    with store.engine.connect() as conn:
        total, on = conn.execute(query).one()
    return int(total), int(on)


def public(rollout: Rollout) -> dict[str, Any]:
    """A rollout as the API shows it (times in ISO 8601)."""
    return {
        "id": rollout.id,
        "group": rollout.group,
        "model": rollout.model,
        "model_name": rollout.model_name,
        "model_version": rollout.model_version,
        "previous_version": rollout.previous_version,
        "canary": list(rollout.canary),
        "soak_s": rollout.soak_s,
        "state": rollout.state,
        "reason": rollout.reason,
        "actor": rollout.actor,
        "created_at": audit.iso(rollout.created_at),
        "soak_started_at": audit.iso(rollout.soak_started_at),
        "finished_at": audit.iso(rollout.finished_at),
        "mode": rollout.mode,
        "selector": rollout.selector,
        "stages": list(rollout.stages) or None,
    }
