"""The one small interface every rollout mode implements, and the decision it returns to the controller.

A mode says what it publishes to the canary (`publishes`), why (`describe`, for the audit log), what it
reports beside the rollout's status (`report`) and how an active rollout advances once its canary passed
`checks.check_canary` at this tick (`advance`). `advance` decides, it does not act: it returns a `Decision`
(wait, soak, promote, roll back, with the reason and the details for the audit log) that the controller
applies under its lock. Modes read the store through `ModeView` and never call back into `Rollouts`.

    serving  (serving.py)  the canary serves the new version; soak once all of it reports it, then promote
    shadow   (shadow.py)   the canary serves the champion with the challenger in shadow; after the soak the
                           measured accuracies decide
    ab       (ab.py)       an A/B split on the canary; guards every tick; a sequential test decides,
                           acted on only with ab_auto_decide (else by the operator)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol

import sqlalchemy as sa

from cloud_sync.rollouts.checks import Limits
from cloud_sync.rollouts.model import Mode, Rollout, RolloutRequest
from cloud_sync.store.bundles import BundleInfo
from cloud_sync.store.db import Store, devices
from contracts.messages import DesiredState

__all__ = ["Action", "Decision", "ModeView", "RolloutMode", "reported"]

Action = Literal["wait", "soak", "promote", "roll_back"]


@dataclass(frozen=True)
class Decision:
    """What the controller does with an active rollout at this tick."""

    action: Action
    reason: str = ""
    details: dict[str, Any] | None = None
    """Recorded in the audit log with a promotion or a rollback (the measured accuracies, the per-arm report)."""
    report: dict[str, Any] | None = None
    """A report the controller keeps for status polls (an A/B rollout's per-arm counts at this tick)."""

    WAIT: ClassVar[Decision]


Decision.WAIT = Decision("wait")


@dataclass(frozen=True)
class ModeView:
    """What a mode may read: the store, the canary limits and how long devices have to confirm."""

    store: Store
    limits: Limits = field(default_factory=Limits)
    confirm_timeout_s: float = 300.0


class RolloutMode(Protocol):
    name: Mode
    label: str
    """How messages name a rollout of this mode: "a shadow canary"."""
    beside: bool
    """The canary keeps serving the champion with the challenger beside it (needs a champion and a canary)."""

    def publishes(
        self, request: RolloutRequest, *, new: BundleInfo, champion: BundleInfo | None, base_url: str, rollout_id: str
    ) -> DesiredState:
        """The desired state the canary devices get."""
        ...

    def describe(self, request: RolloutRequest, *, canary: list[str], previous: int | None) -> str:
        """Why the canary runs what it runs, for the audit log's deploy entry."""
        ...

    def report(self, view: ModeView, rollout: Rollout, now: float) -> dict[str, Any] | None:
        """What the rollout's status shows for this mode beside the devices (None: nothing)."""
        ...

    def advance(self, view: ModeView, rollout: Rollout, now: float) -> Decision:
        """The decision for an active rollout whose canary passed this tick's checks."""
        ...


def reported(store: Store, names: list[str] | tuple[str, ...]) -> dict[str, tuple[str | None, int | None]]:
    """(model name, version) each of `names` reports (one query over those devices, not the whole group)."""
    if not names:
        return {}
    query = sa.select(devices.c.device_id, devices.c.model_name, devices.c.model_version)
    with store.engine.connect() as conn:
        rows = conn.execute(query.where(devices.c.device_id.in_(list(names)))).all()
    return {row.device_id: (row.model_name, row.model_version) for row in rows}
