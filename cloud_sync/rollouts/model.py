"""A rollout as the rollout code passes it around: `Rollout`, frozen and typed (one row of the `rollouts`
table), and `RolloutRequest`, what an operator asks for (the API's `DeployRequest`, the CLI, tests).

`RolloutRequest` states the rules a request must follow (a group id, a known mode, A/B settings only for
and always with an A/B rollout, stages only for a serving rollout, pacing only with stages) and checks them
when it is made; `Rollouts.deploy` then checks only what
needs the store (a rollout in progress, the group's current version, the canary devices).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal, cast, get_args

from cloud_sync.rollouts.selectors import Selector
from contracts.errors import InputError
from contracts.labels import check_label
from contracts.topics import validate_id

__all__ = ["ACTIVE", "MODE_NAMES", "Mode", "Pacing", "Rollout", "RolloutRequest", "State"]

Mode = Literal["serving", "shadow", "ab"]
State = Literal["canary", "soaking", "promoted", "rolled_back", "failed"]
MODE_NAMES: tuple[str, ...] = get_args(Mode)
ACTIVE: tuple[State, ...] = ("canary", "soaking")
"""The states of a rollout the controller still advances."""


@dataclass(frozen=True)
class Pacing:
    """How fast a staged rollout switches devices and when it gives up (AWS IoT Jobs' rollout and abort shape)."""

    max_per_minute: int | None = None
    """At most this many devices switched per minute (spread over the controller's ticks); None = no limit."""
    abort_failed_pct: float | None = None
    """Roll back when more than this % of the switched devices rejected the version or did not confirm it
    within `confirm_timeout_s`; None = no abort rule (any rejection or late device rolls back, as a canary)."""
    abort_min_devices: int = 1
    """The abort rule counts only once at least this many devices were switched."""
    confirm_timeout_s: float | None = None
    """How long a switched device has to report the version; None = the cloud's rollout_confirm_timeout_s."""

    def __post_init__(self) -> None:
        if self.max_per_minute is not None and self.max_per_minute < 1:
            raise InputError("--max-per-minute must be at least 1 device a minute")
        if self.abort_failed_pct is not None and not 0 <= self.abort_failed_pct < 100:
            raise InputError("--abort-failed-pct must be between 0 and 100 (exclusive)")
        if self.abort_min_devices < 1:
            raise InputError("--abort-min-devices must be at least 1")
        if self.confirm_timeout_s is not None and self.confirm_timeout_s <= 0:
            raise InputError("--confirm-timeout must be above 0 seconds")

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, value: Mapping[str, Any] | None) -> Pacing | None:
        return None if value is None else cls(**value)


@dataclass(frozen=True)
class RolloutRequest:
    """What to roll out where, and how: the model version, its group, the canary, the soak and the mode."""

    model_name: str
    model_version: int
    group: str
    canary: str | None = None
    """`25%` of the group's devices (default 10%), or `dev-1,dev-2`; `0` = no canary (straight to the group)."""
    soak_s: float = 600.0
    mode: Mode = "serving"
    ab_fraction: float | None = None
    """`ab` mode: the challenger's share of request keys, in [0, 1]."""
    ab_key: str | None = None
    """`ab` mode: the record field that is the request key; none = the `X-Request-Key` header only."""
    selector: str | None = None
    """Only the group's devices whose labels match (`site=graz,hw!=pi3`, rollouts/selectors.py); None = all."""
    canary_per_label: str | None = None
    """A label key (e.g. `hw`): the canary gets at least one device of each of its values."""
    stages: tuple[float, ...] = ()
    """Staged rollout (serving mode): the cumulative % of the group each stage reaches, increasing, e.g.
    (1, 10, 50, 100); each stage confirms, soaks and passes the canary checks before the next. Empty = the
    canary then the group (`canary`)."""
    pacing: Pacing | None = None
    """Staged rollout: the rate limit and the abort rule."""

    def __post_init__(self) -> None:
        try:
            validate_id(self.group, "group")
        except ValueError as exc:
            raise InputError(str(exc)) from None
        if self.mode not in MODE_NAMES:
            raise InputError(f"rollout mode {self.mode!r}: use one of {', '.join(MODE_NAMES)}")
        if self.mode == "ab" and (self.ab_fraction is None or not 0 <= self.ab_fraction <= 1):
            raise InputError("an A/B rollout needs ab_fraction between 0 and 1 (the challenger's share of keys)")
        if self.mode != "ab" and (self.ab_fraction is not None or self.ab_key):
            raise InputError("ab_fraction and ab_key are for an A/B rollout (mode ab)")
        if self.selector is not None:  # canonical text, stored with the rollout
            object.__setattr__(self, "selector", str(Selector.parse(self.selector)))
        if self.canary_per_label is not None:
            try:
                check_label(self.canary_per_label, "")
            except ValueError as exc:
                raise InputError(f"--canary-per-label: {exc}") from None
        if self.stages and self.mode != "serving":
            raise InputError(f"stages are for a serving rollout; a {self.mode} rollout runs on its canary only")
        if self.stages and self.canary is not None:
            raise InputError("--stages replaces --canary (the first stage is the canary): give one of them")
        if self.pacing is not None and not self.stages:
            raise InputError("--max-per-minute and the abort rule need --stages (e.g. --stages 10%,100%)")
        if any(not 0 < share <= 100 for share in self.stages):
            raise InputError("--stages: each stage is a share of the group above 0% and at most 100%")
        if any(later <= earlier for earlier, later in zip(self.stages, self.stages[1:], strict=False)):
            raise InputError("--stages must increase, e.g. 1%,10%,50%,100%")

    @property
    def model(self) -> str:
        return f"{self.model_name}/{self.model_version}"


@dataclass(frozen=True)
class Rollout:
    """One rollout: what it deploys where, its canary and soak, its state and why, with its times (epoch s)."""

    id: str
    group: str
    model_name: str
    model_version: int
    previous_version: int | None
    """The version the group ran before (the champion), if known."""
    canary: tuple[str, ...]
    soak_s: float
    state: State
    reason: str | None
    actor: str
    created_at: float
    soak_started_at: float | None = None
    finished_at: float | None = None
    mode: Mode = "serving"
    selector: str | None = None
    """Only the group's devices matching this label selector; its promotion publishes to each of them."""
    stages: tuple[float, ...] = ()
    """A staged rollout's cumulative shares of the group (empty: a canary rollout); `canary` then holds every
    device switched so far, so the checks, the overrides and a rollback cover all of them."""
    stage: int = 0
    """The stage in progress (index into `stages`)."""
    stage_devices: tuple[tuple[str, ...], ...] = ()
    """The devices each stage adds, planned at deploy from the group's devices then."""
    pacing: Pacing | None = None
    next_switch_at: float | None = None
    """With a rate limit: the earliest time the next device may be switched."""

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> Rollout:
        """A row of the `rollouts` table."""
        return cls(
            id=row["id"],
            group=row["group_name"],
            model_name=row["model_name"],
            model_version=int(row["model_version"]),
            previous_version=None if row["previous_version"] is None else int(row["previous_version"]),
            canary=tuple(row["canary"] or ()),
            soak_s=float(row["soak_s"]),
            state=cast(State, row["state"]),
            reason=row["reason"],
            actor=row["actor"],
            created_at=float(row["created_at"]),
            soak_started_at=row["soak_started_at"],
            finished_at=row["finished_at"],
            mode=cast(Mode, row.get("mode") or "serving"),
            selector=row.get("selector"),
            stages=tuple(float(share) for share in row.get("stages") or ()),
            stage=int(row.get("stage") or 0),
            stage_devices=tuple(tuple(names) for names in row.get("stage_devices") or ()),
            pacing=Pacing.from_json(row.get("pacing")),
            next_switch_at=row.get("next_switch_at"),
        )

    def as_row(self) -> dict[str, Any]:
        """The values of its `rollouts` row (for an insert)."""
        return {
            "id": self.id,
            "group_name": self.group,
            "model_name": self.model_name,
            "model_version": self.model_version,
            "previous_version": self.previous_version,
            "canary": list(self.canary),
            "soak_s": self.soak_s,
            "state": self.state,
            "reason": self.reason,
            "actor": self.actor,
            "created_at": self.created_at,
            "soak_started_at": self.soak_started_at,
            "finished_at": self.finished_at,
            "mode": self.mode,
            "selector": self.selector,
            "stages": list(self.stages) or None,
            "stage": self.stage if self.stages else None,
            "stage_devices": [list(names) for names in self.stage_devices] or None,
            "pacing": None if self.pacing is None else self.pacing.as_json(),
            "next_switch_at": self.next_switch_at,
        }

    @property
    def model(self) -> str:
        return f"{self.model_name}/{self.model_version}"

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    @property
    def soak_start(self) -> float:
        """When its soak started (its creation, if the soak has not been recorded)."""
        return self.soak_started_at or self.created_at
