"""Shadow canary: the canary keeps serving the champion with the challenger in shadow, soaking from the
start. After the soak the challenger's measured shadow accuracy decides (`checks.shadow_comparison`, both
scored on the same feedback, at least `rollout_min_samples` labels each): at least the champion's ->
promote, worse -> roll back (the shadow stops); not enough feedback within the soak plus the confirm
timeout -> roll back."""

from __future__ import annotations

from typing import Any

from cloud_sync.rollouts.checks import shadow_comparison
from cloud_sync.rollouts.desired import desired_state
from cloud_sync.rollouts.model import Mode, Rollout, RolloutRequest
from cloud_sync.rollouts.modes.base import Decision, ModeView
from cloud_sync.store.bundles import BundleInfo
from contracts.errors import InputError
from contracts.messages import DesiredState

__all__ = ["Shadow"]


class Shadow:
    name: Mode = "shadow"
    label = "a shadow canary"
    beside = True

    def publishes(
        self, request: RolloutRequest, *, new: BundleInfo, champion: BundleInfo | None, base_url: str, rollout_id: str
    ) -> DesiredState:
        if champion is None:
            raise InputError(f"a shadow canary needs a champion: group {request.group} runs no version")
        return desired_state(base_url, champion, rollout_id, shadow=new)

    def describe(self, request: RolloutRequest, *, canary: list[str], previous: int | None) -> str:
        name = request.model_name
        return (
            f"shadow canary: {', '.join(canary)} keep {name}/{previous} serving with {request.model} "
            f"in shadow; promoted after a soak of {request.soak_s:g}s if its accuracy is at least the champion's"
        )

    def report(self, view: ModeView, rollout: Rollout, now: float) -> dict[str, Any] | None:
        return None

    def advance(self, view: ModeView, rollout: Rollout, now: float) -> Decision:
        if rollout.state == "canary":
            return Decision("soak", "shadow canary soaking")
        started, previous = rollout.soak_start, rollout.previous_version
        if now - started < rollout.soak_s or previous is None:
            return Decision.WAIT
        name, limits, canary = rollout.model_name, view.limits, list(rollout.canary)
        result = shadow_comparison(view.store, rollout, since=started, now=now)
        details = {"mode": "shadow", **result.as_details(), "min_labels": limits.min_samples}
        labels = min(result.labels, result.challenger_labels)
        champion, challenger = result.champion_accuracy, result.challenger_accuracy
        if labels >= limits.min_samples and champion is not None and challenger is not None:
            measured = (
                f"{rollout.model} in shadow: accuracy {challenger:.3f} on {result.challenger_labels} labels, "
                f"champion {name}/{previous}: {champion:.3f} on {result.labels} (canary {', '.join(canary)})"
            )
            if challenger >= champion:
                return Decision("promote", f"{measured}: at least as good, promoted", details)
            return Decision("roll_back", f"{measured}: worse, shadow stopped", details)
        if now - started >= rollout.soak_s + view.confirm_timeout_s:
            return Decision(
                "roll_back",
                f"not enough feedback to compare {rollout.model} with {name}/{previous}: "
                f"{labels} labels, {limits.min_samples} needed",
                details,
            )
        return Decision.WAIT
