"""How the rollout controller advances an active rollout in each mode, once its canary passed
`checks.check_canary` at this tick (`Rollouts._advance` runs these under the controller's lock).

Mode `serving`: the canary devices get the new version; once every one of them reports it the soak starts
(else rollback after rollout_confirm_timeout_s); after the soak the rollout is promoted.

Mode `shadow` (a shadow canary): the canary devices get the champion (the group's version) with the
challenger in shadow (`DesiredState.shadow`); during the soak the controller compares the challenger's shadow
accuracy with the champion's on the same feedback (`checks.shadow_comparison`, at least
`min_samples` labels). After the soak: at least as good -> promoted (the challenger becomes the served
version of the group); worse -> rolled back (the canary gets the champion without a shadow); not enough
labels within the soak plus rollout_confirm_timeout_s -> rolled back.

Mode `ab` (an A/B test): the canary devices get the champion with the challenger as an A/B split
(`DesiredState.ab`: the challenger answers `ab_fraction` of the request keys, by a stable hash of the key,
`ab_key` names the record field that is the key, else the `X-Request-Key` header). Every tick the controller
merges the canary's per-arm counts (`checks.ab_arms`) and rolls back when `check_ab` fails: the
challenger's error rate or p99 above the limits, or its accuracy more than `max_accuracy_drop` below the
champion arm's (at least `min_samples` requests / labels on each arm). `status` shows requests, failures,
records and accuracy per arm (computed afresh for the detailed status; `per_device=False` polling gets the
last tick's, kept in `Rollouts.ab_last`). Promotion stays manual: the rollout soaks until an operator
promotes (the challenger serves the group) or rolls back (the canary gets the champion without the split); a
canary that rejects the challenger still rolls back at once.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from cloud_sync.rollouts.checks import ab_arms, ab_report, check_ab, shadow_comparison
from cloud_sync.store.db import Store, devices, rollouts
from contracts.logs import log_event

if TYPE_CHECKING:
    from cloud_sync.rollouts.controller import Rollouts

__all__ = ["advance_ab", "advance_serving", "advance_shadow", "reported"]

logger = logging.getLogger("edgeloop.cloud.rollouts")


def advance_serving(ctl: Rollouts, row: dict[str, Any], now: float) -> None:
    """Serving: soak once every canary device reports the new version (else roll back after the confirm
    timeout); promote when the soak has passed."""
    name, version, canary, since = row["model_name"], row["model_version"], row["canary"], row["created_at"]
    if row["state"] == "canary":
        on = reported(ctl.store, canary)
        waiting = [
            d
            for d in canary
            if (on.get(d, {}).get("model_name"), on.get(d, {}).get("model_version")) != (name, version)
        ]
        if not waiting:
            _start_soak(ctl.store, row["id"], now)
            log_event(logger, "canary on the new version, soaking", rollout=row["id"], soak_s=row["soak_s"])
        elif now - since > ctl.confirm_timeout_s:
            ctl.rollback(
                row["id"],
                "controller",
                f"canary devices {', '.join(waiting)} did not report "
                f"{name}/{version} within {ctl.confirm_timeout_s:g}s",
            )
        return
    if now - (row["soak_started_at"] or since) >= row["soak_s"]:
        ctl.promote(row["id"], "controller", f"soak of {row['soak_s']:g}s passed on {', '.join(canary)}")


def advance_ab(ctl: Rollouts, row: dict[str, Any], now: float) -> None:
    """A/B: soaking at once (the canary keeps serving the champion); every tick compare the challenger's arm
    with the champion's on the canary and roll back when check_ab fails. Promotion is the operator's decision."""
    if row["state"] == "canary":
        _start_soak(ctl.store, row["id"], now)
    name, version, previous = row["model_name"], row["model_version"], row["previous_version"]
    if previous is None:
        return
    arms = ab_arms(ctl.store, row["group_name"], row["canary"], name, previous, version, row["created_at"], now)
    report = ab_report(arms, previous, version)
    ctl.ab_last[row["id"]] = report
    failure = check_ab(arms, name, previous, version, ctl.limits)
    if failure:
        ctl.rollback(row["id"], "controller", failure, {"mode": "ab", "ab": report})


def advance_shadow(ctl: Rollouts, row: dict[str, Any], now: float) -> None:
    """Shadow canary: soaking from the start (the canary keeps serving the champion); after the soak the
    challenger's measured shadow accuracy decides."""
    name, version, previous, canary = (
        row["model_name"],
        row["model_version"],
        row["previous_version"],
        row["canary"],
    )
    if row["state"] == "canary":
        _start_soak(ctl.store, row["id"], now)
        log_event(logger, "shadow canary soaking", rollout=row["id"], soak_s=row["soak_s"])
        return
    started = row["soak_started_at"] or row["created_at"]
    if now - started < row["soak_s"]:
        return
    limits = ctl.limits
    result = shadow_comparison(ctl.store, row["group_name"], canary, name, previous, version, started, now)
    details = {"mode": "shadow", **result.as_details(), "min_labels": limits.min_samples}
    enough = min(result.labels, result.challenger_labels) >= limits.min_samples
    if enough and result.champion_accuracy is not None and result.challenger_accuracy is not None:
        measured = (
            f"{name}/{version} in shadow: accuracy {result.challenger_accuracy:.3f} on "
            f"{result.challenger_labels} labels, champion {name}/{previous}: {result.champion_accuracy:.3f} "
            f"on {result.labels} (canary {', '.join(canary)})"
        )
        if result.challenger_accuracy >= result.champion_accuracy:
            ctl.promote(row["id"], "controller", f"{measured}: at least as good, promoted", details)
        else:
            ctl.rollback(row["id"], "controller", f"{measured}: worse, shadow stopped", details)
        return
    if now - started >= row["soak_s"] + ctl.confirm_timeout_s:
        ctl.rollback(
            row["id"],
            "controller",
            f"not enough feedback to compare {name}/{version} with {name}/{previous}: "
            f"{min(result.labels, result.challenger_labels)} labels, {limits.min_samples} needed",
            details,
        )


def reported(store: Store, names: list[str]) -> dict[str, dict[str, Any]]:
    """The model each of `names` reports (one query over those devices, not the whole group)."""
    query = sa.select(devices.c.device_id, devices.c.model_name, devices.c.model_version)
    with store.engine.connect() as conn:
        rows = conn.execute(query.where(devices.c.device_id.in_(names))).mappings().all() if names else []
    return {row["device_id"]: dict(row) for row in rows}


def _start_soak(store: Store, rollout_id: str, now: float) -> None:
    with store.begin() as conn:
        conn.execute(rollouts.update().where(rollouts.c.id == rollout_id).values(state="soaking", soak_started_at=now))
