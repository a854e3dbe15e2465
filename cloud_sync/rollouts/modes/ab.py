"""A/B test on the canary: the challenger answers `ab_fraction` of the request keys beside the champion,
soaking from the start. Every tick the controller merges the canary's per-arm counts (`checks.ab_arms`) and
rolls back when `checks.check_ab` fails (the challenger's error rate, p99 or accuracy against the champion
arm's); the per-arm report is kept for status polls. Promotion is the operator's decision."""

from __future__ import annotations

from typing import Any

from cloud_sync.rollouts.checks import ab_arms, ab_comparison, ab_report, check_ab
from cloud_sync.rollouts.desired import desired_state
from cloud_sync.rollouts.model import Mode, Rollout, RolloutRequest
from cloud_sync.rollouts.modes.base import Action, Decision, ModeView
from cloud_sync.store.bundles import BundleInfo
from contracts.errors import InputError
from contracts.messages import DesiredState

__all__ = ["ABTest"]


class ABTest:
    name: Mode = "ab"
    label = "an A/B rollout"
    beside = True

    def publishes(
        self, request: RolloutRequest, *, new: BundleInfo, champion: BundleInfo | None, base_url: str, rollout_id: str
    ) -> DesiredState:
        if champion is None:
            raise InputError(f"an A/B rollout needs a champion: group {request.group} runs no version")
        split = (new, float(request.ab_fraction or 0.0), request.ab_key or None)
        return desired_state(base_url, champion, rollout_id, ab=split)

    def describe(self, request: RolloutRequest, *, canary: list[str], previous: int | None) -> str:
        key = (
            f"record field {request.ab_key}, else the X-Request-Key header"
            if request.ab_key
            else "X-Request-Key header"
        )
        return (
            f"A/B: {request.model} answers {request.ab_fraction:g} of the request keys ({key}) beside "
            f"{request.model_name}/{previous} on {', '.join(canary)}; promotion is manual"
        )

    def report(self, view: ModeView, rollout: Rollout, now: float) -> dict[str, Any] | None:
        if rollout.previous_version is None:
            return None
        return ab_comparison(view.store, rollout, now=now)

    def advance(self, view: ModeView, rollout: Rollout, now: float) -> Decision:
        go_on: Action = "soak" if rollout.state == "canary" else "wait"
        if rollout.previous_version is None:
            return Decision(go_on)
        arms = ab_arms(view.store, rollout, now=now)
        report = ab_report(arms, rollout)
        failure = check_ab(arms, rollout, limits=view.limits)
        if failure:
            return Decision("roll_back", failure, {"mode": "ab", "ab": report}, report)
        return Decision(go_on, report=report)
