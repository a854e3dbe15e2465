"""MQTT topic names (contract v1). Everything lives under `edgeloop/v1/`.

| topic                                   | direction      | QoS | retained | payload         |
|-----------------------------------------|----------------|-----|----------|-----------------|
| edgeloop/v1/groups/{group}/desired      | cloud -> edge  | 1   | yes      | DesiredState    |
| edgeloop/v1/devices/{device}/desired    | cloud -> edge  | 1   | yes      | DesiredState    |
| edgeloop/v1/devices/{device}/reported   | edge -> cloud  | 1   | yes      | ReportedState   |
| edgeloop/v1/devices/{device}/status     | edge -> cloud  | 1   | yes (LWT)| DeviceStatus    |
| edgeloop/v1/devices/{device}/telemetry  | edge -> cloud  | 1   | no       | TelemetryWindow |
| edgeloop/v1/devices/{device}/events     | edge -> cloud  | 1   | no       | DeviceEvent     |
| edgeloop/v1/devices/{device}/feedback   | edge -> cloud  | 1   | no       | FeedbackRows    |
| edgeloop/v1/devices/{device}/ack        | cloud -> edge  | 1   | yes      | CloudAck        |
| edgeloop/v1/keys                        | cloud -> edge  | 1   | yes      | KeySetMessage   |
| edgeloop/v1/devices/{device}/predict    | client -> edge | any | no       | /v1/predict body|
| MQTT 5 response topic, else             | edge -> client | req.| no       | SinglePrediction,|
|   edgeloop/v1/devices/{device}/predict/response |      |     |          | BatchPrediction or Problem |

A device-level desired state wins over its group's. The key set (contracts.keyset.KEYS_TOPIC) is fleet-wide:
one signing key signs every group's bundles. The predict topics exist only with the agent's opt-in
`mqtt_predict` setting (docs/mqtt.md, "Inference over MQTT").
"""

from __future__ import annotations

import re

__all__ = [
    "PREFIX",
    "device_topic",
    "group_desired",
    "parse_device_topic",
    "predict_response_topic",
    "validate_id",
]

PREFIX = "edgeloop/v1"
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def validate_id(value: str, what: str = "id") -> str:
    """Device and group ids end up in topic names: no wildcards, slashes or spaces."""
    if not _ID.match(value):
        raise ValueError(f"{what} {value!r} must be 1-64 characters of letters, digits, '.', '_' or '-'")
    return value


def group_desired(group: str) -> str:
    return f"{PREFIX}/groups/{group}/desired"


def device_topic(device: str, kind: str) -> str:
    """kind is one of desired, reported, status, telemetry, events, feedback, ack, predict."""
    return f"{PREFIX}/devices/{device}/{kind}"


def predict_response_topic(device: str) -> str:
    """Where the agent answers a predict request that names no MQTT 5 response topic (MQTT 3.1.1 clients)."""
    return f"{PREFIX}/devices/{device}/predict/response"


def parse_device_topic(topic: str) -> tuple[str, str] | None:
    """Return (device, kind) for a device topic, or None."""
    parts = topic.split("/")
    if len(parts) == 5 and f"{parts[0]}/{parts[1]}" == PREFIX and parts[2] == "devices":
        return parts[3], parts[4]
    return None
