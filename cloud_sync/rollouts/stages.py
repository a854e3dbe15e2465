"""Staged rollouts (`edgeloop deploy REF --group G --stages 1%,10%,50%,100% --soak 10`): the plan, the
operator's spec parsed, and the step the controller takes for a staged rollout at each tick.

    plan      stage k adds the devices that bring the rollout to stages[k] % of the group's devices at deploy
              (sorted by id, at least one device for a share above 0; `parse_canary` picks them)
    canary    (state) the stage's devices are switched (device-level desired state, paced by `pacing`), then
              each must report the version; the canary checks (`checks.check_canary`) run over every device
              switched so far, every tick
    soaking   the stage soaks `soak_s`; then the next stage (`widen`), or, when the next stage is 100 % and
              no rate limit applies, or there is none, the promotion (the group topic)
    promoted / rolled_back   as a canary rollout: a rollback re-signs the previous version for every device
              switched so far; devices not reached yet never left it

The rollout's `canary` holds every device switched so far, so the checks, overrides and rollback of a canary
rollout cover a staged one unchanged; a canary rollout (`--canary 25%`) is the one-stage case. A stage that
adds no device (1 % and 10 % of a group of 10 are both one device) passes without a soak. Stages apply to the
serving mode only (a shadow or A/B rollout stays on its canary: model.RolloutRequest refuses the mix).

Advancing is decided here (`next_step`) and applied by the controller; `record_switch` and `record_widen` write
the rollout's row with a compare-and-set on its state and stage, so two replicas never widen twice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from cloud_sync.rollouts import pacing as pace
from cloud_sync.rollouts.model import Rollout
from cloud_sync.store import audit
from cloud_sync.store.db import Store, rollouts
from contracts.errors import InputError

__all__ = ["StageStep", "next_step", "parse_canary", "parse_stages", "plan", "record_switch", "record_widen", "report"]

StepAction = Literal["wait", "switch", "soak", "widen", "promote", "roll_back"]


def parse_canary(spec: str | None, group_devices: list[str]) -> list[str]:
    """`25%` or `25` -> that share of the group's known devices (at least one); `a,b` -> those devices."""
    spec = (spec or "10%").strip()
    number = spec.removesuffix("%")
    if number.replace(".", "", 1).isdigit():
        share = float(number)
        if not 0 <= share <= 100:
            raise InputError(f"--canary {spec}: a percentage must be between 0 and 100")
        if share == 0 or not group_devices:
            return []
        count = max(1, round(len(group_devices) * share / 100))
        return sorted(group_devices)[:count]
    names = [name.strip() for name in spec.split(",") if name.strip()]
    unknown = [name for name in names if name not in group_devices]
    if unknown:
        known = ", ".join(sorted(group_devices)) or "none yet"
        raise InputError(f"--canary: {', '.join(unknown)} not known in this group (known: {known})")
    return names


def parse_stages(spec: str) -> tuple[float, ...]:
    """`1%,10%,50%,100%` (the % optional) -> (1.0, 10.0, 50.0, 100.0); the order is checked by RolloutRequest."""
    shares = []
    for part in (p.strip().removesuffix("%") for p in spec.split(",")):
        try:
            shares.append(float(part))
        except ValueError:
            raise InputError(f"--stages {spec}: each stage is a share of the group, e.g. 1%,10%,50%,100%") from None
    return tuple(shares)


def plan(
    stages: tuple[float, ...], group_devices: list[str], first: Callable[[list[str]], list[str]] | None = None
) -> tuple[tuple[str, ...], ...]:
    """The devices each stage adds (cumulative shares of `group_devices`, first `parse_canary`'s choice);
    `first` may widen the first stage (a device of each label value: `selectors.with_each_label`)."""
    added: list[tuple[str, ...]] = []
    reached: set[str] = set()
    for index, share in enumerate(stages):
        cumulative = parse_canary(f"{share:g}%", group_devices)
        if index == 0 and first is not None and cumulative:
            cumulative = first(cumulative)
        chosen = [name for name in cumulative if name not in reached]
        reached.update(chosen)
        added.append(tuple(chosen))
    return tuple(added)


@dataclass(frozen=True)
class StageStep:
    """What the controller does with a staged rollout at this tick."""

    action: StepAction
    reason: str = ""
    devices: tuple[str, ...] = ()
    """`switch`: the devices to switch now."""
    next_switch_at: float | None = None
    """`switch`: the next slot of the rate limit."""


def _label(rollout: Rollout, stage: int | None = None) -> str:
    index = rollout.stage if stage is None else stage
    return f"stage {index + 1}/{len(rollout.stages)} ({rollout.stages[index]:g}%)"


def next_step(rollout: Rollout, seen: pace.Progress, *, failure: str | None, now: float) -> StageStep:
    """The step for an active staged rollout, from this tick's checks (`failure`) and its devices (`seen`)."""
    if failure:
        return StageStep("roll_back", f"{_label(rollout)}: {failure}")
    if (aborted := pace.abort_reason(rollout.pacing, seen)) is not None:
        return StageStep("roll_back", f"{_label(rollout)}: {aborted}")
    strict = rollout.pacing is None or rollout.pacing.abort_failed_pct is None
    if seen.late and strict:
        return StageStep(
            "roll_back",
            f"{_label(rollout)}: devices {', '.join(seen.late[:5])} did not report {rollout.model} "
            f"within {seen.timeout_s:g}s",
        )
    last = rollout.stage == len(rollout.stages) - 1
    if rollout.state == "canary":
        done = set(rollout.canary)
        pending = tuple(name for name in rollout.stage_devices[rollout.stage] if name not in done)
        if pending:
            batch, next_at = pace.next_batch(pending, rollout.pacing, rollout.next_switch_at, now)
            return StageStep("switch", devices=batch, next_switch_at=next_at) if batch else StageStep("wait")
        if seen.waiting:
            return StageStep("wait")
        confirmed = f"{_label(rollout)} confirmed on {len(seen.confirmed)} of {seen.switched} devices"
        if last and rollout.stages[-1] >= 100:
            return StageStep("promote", confirmed)
        if not rollout.stage_devices[rollout.stage] and not last:
            return StageStep("widen", f"{_label(rollout)} adds no device")
        return StageStep("soak", confirmed)
    if now - rollout.soak_start < rollout.soak_s:
        return StageStep("wait")
    soaked = f"{_label(rollout)} soaked {rollout.soak_s:g}s on {seen.switched} devices"
    paced = rollout.pacing is not None and rollout.pacing.max_per_minute is not None
    if last or (rollout.stage == len(rollout.stages) - 2 and rollout.stages[-1] >= 100 and not paced):
        return StageStep("promote", soaked)
    return StageStep("widen", soaked)


def record_switch(store: Store, rollout: Rollout, step: StageStep, *, now: float) -> bool:
    """The switched devices and the next rate slot on the rollout's row (compare-and-set), with an audit entry
    (each batch and its time: the rate limit is visible in the audit log); False if another replica did it."""
    c = rollouts.c
    same_slot = (
        c.next_switch_at.is_(None) if rollout.next_switch_at is None else c.next_switch_at == rollout.next_switch_at
    )
    with store.begin() as conn:
        changed = conn.execute(
            rollouts.update()
            .where(c.id == rollout.id, c.state == rollout.state, c.stage == rollout.stage, same_slot)
            .values(canary=[*rollout.canary, *step.devices], next_switch_at=step.next_switch_at)
        ).rowcount
        if changed:
            details = {"rollout_id": rollout.id, "stage": rollout.stage + 1, "devices": list(step.devices)}
            reason = f"{_label(rollout)}: {len(step.devices)} devices switched"
            audit.record(conn, "controller", "switch", target=_target(rollout), reason=reason, details=details, at=now)
    return bool(changed)


def record_widen(store: Store, rollout: Rollout, step: StageStep, *, now: float) -> bool:
    """The next stage starts (compare-and-set on state and stage); False if another replica widened first."""
    c = rollouts.c
    next_slot = None if rollout.next_switch_at is None else max(rollout.next_switch_at, now)
    following = rollout.stage + 1
    with store.begin() as conn:
        changed = conn.execute(
            rollouts.update()
            .where(c.id == rollout.id, c.state == rollout.state, c.stage == rollout.stage)
            .values(stage=following, state="canary", soak_started_at=None, next_switch_at=next_slot)
        ).rowcount
        if changed:
            adds = len(rollout.stage_devices[following])
            reason = f"{step.reason}; {_label(rollout, following)} adds {adds} devices"
            details = {"rollout_id": rollout.id, "stage": following + 1}
            audit.record(conn, "controller", "widen", target=_target(rollout), reason=reason, details=details, at=now)
    return bool(changed)


def report(rollout: Rollout, seen: pace.Progress | None, *, checks: str | None) -> dict[str, Any] | None:
    """What `rollout status` shows of the stages: the stage, its devices, its devices' progress, its checks."""
    if not rollout.stages:
        return None
    finished = rollout.state == "promoted"
    index = len(rollout.stages) - 1 if finished else rollout.stage
    pacing = rollout.pacing
    result: dict[str, Any] = {
        "stage": index + 1,
        "of": len(rollout.stages),
        "percent": rollout.stages[index],
        "stages": list(rollout.stages),
        "devices": list(rollout.stage_devices[index]) if index < len(rollout.stage_devices) else [],
        "switched": len(rollout.canary),
        "planned": sum(len(names) for names in rollout.stage_devices),
        "checks": checks,
        "max_per_minute": pacing.max_per_minute if pacing else None,
        "abort_failed_pct": pacing.abort_failed_pct if pacing else None,
        "abort_min_devices": pacing.abort_min_devices if pacing else None,
        "next_switch_at": audit.iso(rollout.next_switch_at) if rollout.active else None,
    }
    if seen is not None:
        result |= {
            "confirmed": len(seen.confirmed),
            "waiting": len(seen.waiting),
            "rejected": [device for device, _ in seen.rejected],
            "late": list(seen.late),
        }
    return result


def _target(rollout: Rollout) -> str:
    return f"{rollout.model} in group {rollout.group}"
