"""MQTT message schemas (contract v1). Payloads are JSON objects with `schema_version: "v1"`.

Telemetry windows are defined in `contracts.telemetry`; this module has the deployment messages.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from contracts.labels import check_labels

__all__ = [
    "ABSplit",
    "CloudAck",
    "DesiredState",
    "DeviceEvent",
    "DeviceStatus",
    "FeedbackRow",
    "FeedbackRows",
    "ReportedState",
    "ShadowBundle",
]


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    schema_version: Literal["v1"] = "v1"


class ShadowBundle(BaseModel):
    """A challenger bundle the device runs in shadow beside the served model (same model name): it predicts
    every record, never answers. Verified exactly like the main bundle (signature before download, sha256,
    golden samples)."""

    model_config = ConfigDict(extra="ignore")
    manifest: dict[str, Any]
    """The challenger bundle's manifest, exactly as signed."""
    signature: str
    """The content of the challenger bundle's manifest.sig."""
    model_url: str
    """Where to download the challenger's model.onnx."""


class ABSplit(ShadowBundle):
    """An A/B challenger (same model name as the served one): it answers the requests whose key hashes
    below `fraction` (`contracts.ab.arm_of`: BLAKE2b of the key, stable across restarts and devices), the
    served model (the champion) answers the rest and every request without a key. Verified exactly like a
    shadow bundle."""

    fraction: float = Field(ge=0.0, le=1.0)
    """Share of request keys the challenger answers, in [0, 1]."""
    key_field: str | None = None
    """A record field whose value is the record's request key (e.g. `machine_id`; it need not be a model
    input). None = only the `X-Request-Key` header of the request is a key. A record with the field set uses
    it, else the header; with neither the champion answers."""


class DesiredState(_Message):
    """What a device should run. Carries the signed manifest so the device can verify before downloading."""

    manifest: dict[str, Any]
    """The bundle's manifest, exactly as signed (see contracts.manifest.Manifest)."""
    signature: str
    """The content of the bundle's manifest.sig."""
    model_url: str
    """Where to download model.onnx (HTTP or HTTPS); checked against the manifest's sha256 and size."""
    rollout_id: str | None = None
    issued_at: str
    shadow: ShadowBundle | None = None
    """A challenger to run in shadow beside this model (a shadow canary); None = no shadow (stops one that a
    previous desired state started)."""
    ab: ABSplit | None = None
    """An A/B challenger that answers a stable share of request keys beside this model (the champion);
    None = no split (stops one that a previous desired state started)."""


class ReportedState(_Message):
    device_id: str
    group: str
    model_name: str | None
    model_version: int | None
    bundle_sha256: str | None
    state: Literal["serving", "updating", "no_model"]
    last_error: str | None = None
    agent_version: str
    updated_at: str
    labels: dict[str, str] = Field(default_factory=dict)
    """The device's labels (agent setting `labels`: hardware class, site, firmware ...); rollouts select on them.
    Absent from agents before labels (= none)."""

    trusted_keys: list[str] = Field(default_factory=list)
    """Key ids of the public keys the device verifies bundles with (two during a key rotation's overlap);
    empty when it checks no signatures."""

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        return check_labels(value)


class DeviceStatus(_Message):
    device_id: str
    online: bool
    at: str


class DeviceEvent(_Message):
    """Published at QoS 1 on edgeloop/v1/devices/{device}/events; (device_id, epoch, seq) is unique."""

    device_id: str
    seq: int
    epoch: int = 0
    """When the device's outbox was created (Unix ms; 0 = before epochs existed): see TelemetryWindow.epoch."""
    kind: Literal["deployed", "rejected", "rolled_back", "error", "started"]
    model_name: str | None = None
    model_version: int | None = None
    reason: str | None = None
    details: dict[str, Any] = Field(default_factory=dict)
    at: str


class FeedbackRow(BaseModel):
    """One labelled prediction with the input fields the device keeps (data minimisation)."""

    model_config = ConfigDict(extra="ignore")
    prediction_id: str
    made_at: str
    predicted: Any
    """The served model's label."""
    actual: Any
    """The true label that came back as feedback."""
    features: dict[str, Any]
    """The kept input fields of the prediction (`feedback_rows_fields`; missing values as null)."""


class FeedbackRows(_Message):
    """Opt-in (`feedback_rows`): published at QoS 1 on edgeloop/v1/devices/{device}/feedback; (device_id, seq)
    is unique per device and outbox epoch. Labelled rows for retraining, all made by one model version."""

    device_id: str
    group: str
    seq: int
    epoch: int = 0
    """When the device's outbox was created (Unix ms): see TelemetryWindow.epoch."""
    model_name: str
    model_version: int
    rows: list[FeedbackRow]
    dropped: int = 0
    """Rows not sent since the agent started because of the hourly cap or a nearly full outbox."""
    sent_at: str


class CloudAck(_Message):
    """End-to-end acknowledgement, retained on edgeloop/v1/devices/{device}/ack, published by the cloud only after
    its store committed: per stream, the highest sequence number `n` such that 1..n of this outbox epoch are all
    stored (the watermark). A device keeps every message the watermark does not cover and sends it again."""

    device_id: str
    epoch: int
    """The device outbox's epoch these watermarks are for (a device ignores another epoch's)."""
    watermarks: dict[str, int]
    """Stream (`telemetry`, `events`, `feedback`) -> highest contiguous sequence number stored; a stream not
    listed has nothing stored yet in this epoch."""
    at: str
    """When the cloud published it (ISO 8601, UTC)."""
