"""A/B test on the canary: the challenger answers `ab_fraction` of the request keys beside the champion,
soaking from the start. Every tick the controller reads the canary's per-arm counts window by window
(`checks.ab_windows`), rolls back when `checks.check_ab` fails (the challenger's error rate, p99 or accuracy
against the champion arm's) and runs the sequential test on the arms' feedback accuracy (`sequential.py`):
its verdict ("better", "worse", "not yet known", with its confidence) is in the report kept for status
polls. With `ab_auto_decide` on (`SequentialRule.auto_decide`), "worse" rolls back at once and "better"
promotes once the soak has passed, the verdict in the audit log's reason and details; off (the default),
promotion and rollback on the verdict are the operator's."""

from __future__ import annotations

from typing import Any

from cloud_sync.rollouts.checks import ab_report, ab_windows, check_ab, merge_arms
from cloud_sync.rollouts.desired import desired_state
from cloud_sync.rollouts.model import Mode, Rollout, RolloutRequest
from cloud_sync.rollouts.modes.base import Action, Decision, ModeView
from cloud_sync.rollouts.sequential import Tally, Verdict, sequential_test
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
            f"{request.model_name}/{previous} on {', '.join(canary)}; a sequential test on the arms' accuracy "
            "decides (acted on only with ab_auto_decide, else by the operator)"
        )

    def report(self, view: ModeView, rollout: Rollout, now: float) -> dict[str, Any] | None:
        if rollout.previous_version is None:
            return None
        return self._measure(view, rollout, now)[0]

    def advance(self, view: ModeView, rollout: Rollout, now: float) -> Decision:
        go_on: Action = "soak" if rollout.state == "canary" else "wait"
        if rollout.previous_version is None:
            return Decision(go_on)
        report, failure, verdict = self._measure(view, rollout, now)
        details = {"mode": "ab", "ab": report}
        auto = view.limits.ab.auto_decide
        ref = f"A/B challenger {rollout.model} against {rollout.model_name}/{rollout.previous_version}"
        if auto and verdict.outcome == "worse":
            return Decision("roll_back", f"{ref}: {verdict.summary}; rolled back (ab_auto_decide)", details, report)
        if failure:
            return Decision("roll_back", failure, details, report)
        if auto and verdict.outcome == "better" and now - rollout.soak_start >= rollout.soak_s:
            return Decision("promote", f"{ref}: {verdict.summary}; promoted (ab_auto_decide)", details, report)
        return Decision(go_on, report=report)

    @staticmethod
    def _measure(view: ModeView, rollout: Rollout, now: float) -> tuple[dict[str, Any], str | None, Verdict]:
        """The per-arm report with the test's `decision` block, the guard's failure (or None) and the verdict."""
        per_window = ab_windows(view.store, rollout, now=now)
        arms = merge_arms(per_window)
        peeks = [(Tally.of(window["champion"]), Tally.of(window["challenger"])) for window in per_window]
        verdict = sequential_test(peeks, view.limits.ab)
        report: dict[str, Any] = {**ab_report(arms, rollout), "decision": verdict.as_report()}
        return report, check_ab(arms, rollout, limits=view.limits), verdict
