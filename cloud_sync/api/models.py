"""Request and response models of the cloud API's device, rollout and alert routes (OpenAPI shows them; FastAPI checks
every answer against them). The routes answer what `fleet.stats`, `rollouts.status` and `alerts.evaluator`
build; times are ISO 8601 strings (UTC)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

__all__ = [
    "ABArm",
    "ABDecision",
    "ABReport",
    "Alert",
    "DeployRequest",
    "Device",
    "ReasonRequest",
    "Rollout",
    "RolloutDevice",
    "RolloutStatus",
]


class Device(BaseModel):
    device_id: str
    group: str | None
    online: bool
    last_seen: str | None
    last_seen_s_ago: float
    model_name: str | None
    model_version: int | None
    bundle_sha256: str | None
    state: str | None = Field(description="What the agent last reported: serving, downloading, failed ...")
    last_error: str | None
    agent_version: str | None
    unacknowledged: int | None = Field(
        None,
        description="Messages the device held that the cloud had not acknowledged, as its latest telemetry window "
        "reported (end-to-end acknowledgement); null from agents before it",
    )
    unacknowledged_oldest_s: float | None = Field(
        None, description="Age in seconds of the oldest of them when that window was written; null when none"
    )
    unacknowledged_reported_at: str | None = Field(None, description="End of the window that reported them (ISO)")
    labels: dict[str, str] = Field(
        default_factory=dict, description="Labels from the device's reported state (site, hw ...); {} when none"
    )
    clock_offset_s: float | None = Field(
        None,
        description="The cloud's clock minus the device's, measured from its send times (positive: the device is "
        "slow); window times are stored corrected by it beyond clock_tolerance_s; null until measured",
    )
    clock_offset_at: str | None = Field(None, description="When that offset was measured (ISO)")


class Rollout(BaseModel):
    id: str
    group: str
    model: str = Field(description="NAME/VERSION")
    model_name: str
    model_version: int
    previous_version: int | None = Field(description="What the group ran before (the champion), if known")
    canary: list[str]
    soak_s: float
    state: Literal["canary", "soaking", "promoted", "rolled_back", "failed"]
    reason: str | None
    actor: str
    created_at: str | None
    soak_started_at: str | None
    finished_at: str | None
    mode: Literal["serving", "shadow", "ab"]
    selector: str | None = Field(
        None, description="Label selector: only the group's devices matching it (null = the whole group)"
    )
    stages: list[float] | None = Field(
        default=None, description="A staged rollout's cumulative shares of the group (%); null for a canary rollout"
    )


class RolloutStage(BaseModel):
    """A staged rollout's stage in progress (the last one once promoted), its devices and its checks."""

    stage: int = Field(description="1-based index of the stage in progress")
    of: int = Field(description="How many stages")
    percent: float = Field(description="The share of the group this stage reaches")
    stages: list[float]
    devices: list[str] = Field(description="The devices this stage adds")
    switched: int = Field(description="Devices switched so far (every stage up to this one)")
    planned: int = Field(description="Devices the stages switch one by one (planned at deploy)")
    checks: str | None = Field(description='"passing", or why the rollout was (or will be) rolled back')
    max_per_minute: int | None
    abort_failed_pct: float | None
    abort_min_devices: int | None
    next_switch_at: str | None = Field(description="Rate limit: the earliest next switch (ISO)")
    confirmed: int | None = Field(default=None, description="Switched devices reporting the version")
    waiting: int | None = Field(default=None, description="Switched devices not reporting it yet")
    rejected: list[str] | None = Field(default=None, description="Switched devices that rejected it")
    late: list[str] | None = Field(default=None, description="Switched devices past the confirm timeout")


class RolloutDevice(BaseModel):
    device_id: str
    canary: bool
    online: bool
    model_version: int | None
    on_target: bool = Field(description="Reports the rollout's version")
    state: str | None
    last_error: str | None


class ABArm(BaseModel):
    """One arm of an A/B split, merged from the canary's windows since the rollout started."""

    model_version: int | None
    requests: int
    errors: int = Field(description="Requests in which this arm's model failed (the champion answered them)")
    error_rate: float | None
    p99_s: float | None = Field(description="p99 of this arm's model time; null when unknown or past the last bucket")
    records: int
    share: float | None = Field(description="This arm's share of the records answered")
    labels: int = Field(description="Feedback labels on this arm's answers")
    accuracy: float | None


class ABDecision(BaseModel):
    """The sequential test on the arms' feedback accuracy (mSPRT, docs/loop.md "A/B decision")."""

    verdict: Literal["better", "worse", "not yet known"] = Field(description="The challenger against the champion")
    confidence: float = Field(description="1 - the always-valid p-value (a verdict needs at least 1 - alpha)")
    p_value: float = Field(description="Always-valid p-value: the running minimum over the windows read so far")
    difference: float | None = Field(description="Challenger accuracy - champion accuracy on every label so far")
    interval: list[float] | None = Field(description="Always-valid (1 - alpha) interval of the difference, now")
    champion_labels: int
    challenger_labels: int
    decided_at_labels: list[int] | None = Field(description="[champion, challenger] labels when it was decided")
    method: Literal["mSPRT"]
    alpha: float
    min_labels: int = Field(description="Labels each arm needs before a verdict")
    auto_decide: bool = Field(description="The controller promotes or rolls back on the verdict (ab_auto_decide)")
    summary: str = Field(description="The verdict in one line")


class ABReport(BaseModel):
    champion: ABArm
    challenger: ABArm
    decision: ABDecision | None = Field(default=None, description="Absent in reports made before the test existed")


class RolloutStatus(Rollout):
    """A rollout with its group's devices (or, with `devices=false`, only the counts)."""

    devices: list[RolloutDevice] | None = Field(default=None, description="Absent with devices=false")
    group_devices: int | None = Field(default=None, description="Devices in the group (devices=false only)")
    on_target: int | None = Field(default=None, description="How many devices report the rollout's version")
    ab: ABReport | None = Field(
        default=None, description="A/B rollouts: per-arm requests, failures, accuracy and the sequential test's verdict"
    )
    stage: RolloutStage | None = Field(default=None, description="Staged rollouts: the stage and its checks")


class Alert(BaseModel):
    id: int
    rule: str
    subject: str
    state: Literal["firing", "resolved"]
    severity: str
    value: float | None
    threshold: float | None
    p_value: float | None = None
    """Drift alerts: the chi-square p-value of the merged counts, adjusted across features (docs/loop.md)."""
    records: int | None = None
    """Drift alerts: the records the decision rests on."""
    message: str
    fired_at: str | None
    resolved_at: str | None
    resolution: str | None = None
    """Why it resolved when its breach did not simply end (an accepted drift: `accepted: <model> v2 validated on
    gw-3's data, shadow accuracy ...`)."""
    acknowledged_by: str | None
    acknowledged_at: str | None


class DeployRequest(BaseModel):
    model_name: str = Field(min_length=1)
    model_version: int = Field(ge=1, le=2**63 - 1)
    group: str = Field(min_length=1)
    canary: str | None = Field(default=None, description="`25%` of the group, or `dev-1,dev-2`; `0` = no canary")
    soak_minutes: float = Field(default=10.0, ge=0)
    mode: Literal["serving", "shadow", "ab"] = Field(
        default="serving",
        description="`shadow`: the canary keeps serving the group's version with this one in shadow; promoted "
        "after the soak if its measured accuracy is at least the champion's. `ab`: this one answers `ab_fraction` "
        "of the request keys on the canary (stable hash of the key); status shows per-arm accuracy; promotion "
        "is manual",
    )
    ab_fraction: float | None = Field(
        default=None, ge=0, le=1, description="`ab` mode: the challenger's share of request keys, in [0, 1]"
    )
    ab_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="`ab` mode: the record field that is the request key (e.g. `machine_id`); none = the "
        "`X-Request-Key` header only",
    )
    selector: str | None = Field(
        default=None,
        min_length=1,
        max_length=1000,
        description="Only the group's devices whose labels match: `site=graz,hw=pi4`, `hw!=pi3`, `hw in (pi4,pi5)`, "
        "`gpu`, `!gpu` (ANDed); its promotion publishes device-level desired states to the matching devices",
    )
    canary_per_label: str | None = Field(
        default=None,
        min_length=1,
        max_length=63,
        description="A label key (e.g. `hw`): the canary gets at least one device of each of its values",
    )

    stages: list[float] | None = Field(
        default=None,
        min_length=1,
        max_length=20,
        description="Staged rollout (serving mode, instead of `canary`): cumulative % of the group per stage, "
        "increasing, e.g. [1, 10, 50, 100]; each stage confirms, soaks `soak_minutes` and passes the canary "
        "checks before the next; a failed check rolls every switched device back",
    )
    max_per_minute: int | None = Field(
        default=None, ge=1, description="Staged rollout: at most this many devices switched per minute"
    )
    abort_failed_pct: float | None = Field(
        default=None,
        ge=0,
        lt=100,
        description="Staged rollout: roll back when more than this % of the switched devices rejected the "
        "version or did not confirm it within `confirm_timeout_s` (after `abort_min_devices`)",
    )
    abort_min_devices: int = Field(default=1, ge=1, description="The abort rule counts from this many devices")
    confirm_timeout_s: float | None = Field(
        default=None, gt=0, description="Seconds a switched device has to confirm; default: the cloud's setting"
    )


class ReasonRequest(BaseModel):
    reason: str | None = None


class KeyStatusResponse(BaseModel):
    """`GET /v1/keys`: the signing key, the set devices trust, and which bundles each key signed."""

    current: str = Field(description="Key id of the key that signs from now on (`edgeloop convert`, rollbacks)")
    trusted: list[str] = Field(description="Key ids devices and the registry trust (two during an overlap)")
    seq: int = Field(description="Sequence number of the last key set published (0: never rotated)")
    overlap: bool = Field(description="True between `keys rotate` and `keys retire`")
    bundles_by_key: dict[str, list[str]] = Field(description="Key id -> bundles (NAME/VERSION) it signed")
