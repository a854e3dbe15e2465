"""Serving canary (the default mode): the canary devices serve the new version; the rollout soaks once every
one of them reports it (else it rolls back after `rollout_confirm_timeout_s`) and is promoted when the soak
has passed. `checks.check_canary` guards it every tick (the controller runs it before `advance`)."""

from __future__ import annotations

from typing import Any

from cloud_sync.rollouts.desired import desired_state
from cloud_sync.rollouts.model import Mode, Rollout, RolloutRequest
from cloud_sync.rollouts.modes.base import Decision, ModeView, reported
from cloud_sync.store.bundles import BundleInfo
from contracts.messages import DesiredState

__all__ = ["Serving"]


class Serving:
    name: Mode = "serving"
    label = "a canary rollout"
    beside = False

    def publishes(
        self, request: RolloutRequest, *, new: BundleInfo, champion: BundleInfo | None, base_url: str, rollout_id: str
    ) -> DesiredState:
        return desired_state(base_url, new, rollout_id)

    def describe(self, request: RolloutRequest, *, canary: list[str], previous: int | None) -> str:
        return f"canary {', '.join(canary)} then group, soak {request.soak_s:g}s" if canary else "no canary"

    def report(self, view: ModeView, rollout: Rollout, now: float) -> dict[str, Any] | None:
        return None

    def advance(self, view: ModeView, rollout: Rollout, now: float) -> Decision:
        canary = ", ".join(rollout.canary)
        if rollout.state == "canary":
            on = reported(view.store, rollout.canary)
            target = (rollout.model_name, rollout.model_version)
            waiting = [device for device in rollout.canary if on.get(device) != target]
            if not waiting:
                return Decision("soak", "canary on the new version")
            if now - rollout.created_at > view.confirm_timeout_s:
                return Decision(
                    "roll_back",
                    f"canary devices {', '.join(waiting)} did not report {rollout.model} "
                    f"within {view.confirm_timeout_s:g}s",
                )
            return Decision.WAIT
        if now - rollout.soak_start >= rollout.soak_s:
            return Decision("promote", f"soak of {rollout.soak_s:g}s passed on {canary}")
        return Decision.WAIT
