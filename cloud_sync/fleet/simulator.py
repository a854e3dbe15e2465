"""A fleet simulator: devices that speak the v1 contract without running models, for tests and `bench/`.

- `make_window(...)` builds a plausible `TelemetryWindow` for a manifest: feature counts drawn from the
  reference profile (optionally shifted, to make drift), predicted classes, latency, errors, feedback.
- `SimDevice` is one device with its own MQTT client, behaving like the edge agent on the wire: online
  status with a last will, the device-level desired state winning over the group's, the version policy
  (an older version only with a signed `rollback`), retained reported state and `deployed`/`rejected` events.
  It does not verify signatures or download; `reject` decides which versions it refuses (a failed health
  check); `wait_for(version)` waits for a switch.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from contracts.manifest import CategoricalProfile, Manifest, NumericProfile
from contracts.messages import DesiredState, DeviceEvent, DeviceStatus, ReportedState
from contracts.telemetry import LATENCY_BUCKETS, CategoricalCounts, NumericCounts, TelemetryWindow
from contracts.topics import device_topic, group_desired

__all__ = ["SimDevice", "iso_utc", "make_window"]


def iso_utc(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def make_window(
    device: str,
    group: str,
    seq: int,
    end: float,
    manifest: Manifest | None = None,
    rng: np.random.Generator | None = None,
    requests: int = 100,
    errors: int = 0,
    latency_s: float = 0.004,
    shift: float = 0.0,
    accuracy: float | None = None,
    feedback: int = 0,
    seconds: float = 10.0,
) -> TelemetryWindow:
    """One window of `requests` single-record requests; `shift` (0..1) moves feature mass to the top bins."""
    rng = rng or np.random.default_rng(seq)
    latency = [0] * (len(LATENCY_BUCKETS) + 1)
    bucket = next((i for i, bound in enumerate(LATENCY_BUCKETS) if latency_s <= bound), len(LATENCY_BUCKETS))
    latency[bucket] = requests
    features: dict[str, NumericCounts | CategoricalCounts] = {}
    predicted: dict[str, int] = {}
    confusion: dict[str, dict[str, int]] = {}
    if manifest is not None:
        for name, profile in manifest.reference_profile.items():
            if isinstance(profile, NumericProfile):
                p = np.asarray(profile.proportions, dtype=float)
                if shift:
                    top = np.zeros_like(p)
                    top[-1] = 1.0
                    p = (1 - shift) * p + shift * top
                bins = rng.multinomial(requests, p / p.sum()).tolist()
                features[name] = NumericCounts(bins=bins)
            elif isinstance(profile, CategoricalProfile):
                keys = list(profile.frequencies)
                q = np.asarray([profile.frequencies[k] for k in keys], dtype=float)
                drawn = rng.multinomial(requests, q / q.sum()).tolist()
                features[name] = CategoricalCounts(counts=dict(zip(keys, drawn, strict=True)))
        classes = [str(c) for c in manifest.classes]
        share = np.asarray([manifest.prediction_profile.get(c, 1.0) for c in classes], dtype=float)
        predicted = dict(zip(classes, rng.multinomial(requests, share / share.sum()).tolist(), strict=True))
        if feedback and accuracy is not None:
            right = round(feedback * accuracy)
            first, second = classes[0], classes[-1]
            confusion = {first: {first: right, second: feedback - right}}
    return TelemetryWindow(
        device_id=device,
        group=group,
        seq=seq,
        window_start=iso_utc(end - seconds),
        window_end=iso_utc(end),
        agent_version="sim",
        model_name=manifest.name if manifest else None,
        model_version=manifest.version if manifest else None,
        requests=requests,
        records=requests,
        errors={"schema": errors} if errors else {},
        latency_counts=latency,
        latency_sum=latency_s * requests,
        predicted=predicted,
        features=features,
        confusion=confusion,
    )


class SimDevice:
    """One simulated device on its own MQTT connection (see the module docstring)."""

    def __init__(
        self,
        device_id: str,
        group: str,
        host: str,
        port: int,
        reject: Callable[[dict[str, Any]], str | None] = lambda _manifest: None,
        model: tuple[str, int] | None = None,
        labels: dict[str, str] | None = None,
    ) -> None:
        self.device_id, self.group = device_id, group
        self.labels = labels or {}
        self.reject = reject
        self.model = model
        self.seq = 0
        self.telemetry_seq = 0
        self.history: list[tuple[str, int]] = []
        self._desired: dict[str, DesiredState] = {}
        self._lock = threading.Lock()
        self.changed = threading.Condition()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"sim-{device_id}", protocol=mqtt.MQTTv5)
        self.client.will_set(device_topic(device_id, "status"), self._status(False), qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.host, self.port = host, port

    def start(self) -> SimDevice:
        self.client.connect(self.host, self.port)
        self.client.loop_start()
        return self

    def stop(self) -> None:
        self.client.publish(device_topic(self.device_id, "status"), self._status(False), qos=1, retain=True)
        self.client.disconnect()
        self.client.loop_stop()

    def wait_for(self, version: int, timeout: float = 10.0) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: self.model is not None and self.model[1] == version, timeout)

    def publish_window(self, window: TelemetryWindow) -> None:
        self.client.publish(device_topic(self.device_id, "telemetry"), window.model_dump_json(), qos=1)

    # -- behaviour ----------------------------------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, _reason: Any, _p: Any) -> None:
        client.subscribe([(group_desired(self.group), 1), (device_topic(self.device_id, "desired"), 1)])
        client.publish(device_topic(self.device_id, "status"), self._status(True), qos=1, retain=True)
        self._report()

    def _on_message(self, _client: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        level = "device" if message.topic.startswith(f"edgeloop/v1/devices/{self.device_id}/") else "group"
        with self._lock:
            if message.payload:
                self._desired[level] = DesiredState.model_validate_json(message.payload)
            else:
                self._desired.pop(level, None)
            desired = self._desired.get("device") or self._desired.get("group")
        if desired is not None:
            self._apply(desired)

    def _apply(self, desired: DesiredState) -> None:
        manifest = desired.manifest
        name, version = manifest["name"], int(manifest["version"])
        if self.model == (name, version):
            return
        reason = self.reject(manifest)
        older = self.model is not None and self.model[0] == name and version < self.model[1]
        if reason is None and older and not manifest.get("rollback"):
            assert self.model is not None
            reason = f"{name}/{version} is older than the current {name}/{self.model[1]}: refused as a replay"
        if reason is not None:
            self._event("rejected", name, version, reason, {"permanent": True})
            return
        kind = "rolled_back" if self.model and version < self.model[1] else "deployed"
        self.model = (name, version)
        self.history.append(self.model)
        self._report()
        self._event(kind, name, version, None, {"rollout_id": desired.rollout_id})
        with self.changed:
            self.changed.notify_all()

    def _event(self, kind: str, name: str, version: int, reason: str | None, details: dict[str, Any]) -> None:
        self.seq += 1
        event = DeviceEvent(
            device_id=self.device_id,
            seq=self.seq,
            kind=kind,  # type: ignore[arg-type]
            model_name=name,
            model_version=version,
            reason=reason,
            details=details,
            at=iso_utc(time.time()),
        )
        self.client.publish(device_topic(self.device_id, "events"), event.model_dump_json(), qos=1)

    def _report(self) -> None:
        state = ReportedState(
            device_id=self.device_id,
            group=self.group,
            model_name=self.model[0] if self.model else None,
            model_version=self.model[1] if self.model else None,
            bundle_sha256=None,
            state="serving" if self.model else "no_model",
            agent_version="sim",
            updated_at=iso_utc(time.time()),
            labels=self.labels,
        )
        self.client.publish(device_topic(self.device_id, "reported"), state.model_dump_json(), qos=1, retain=True)

    def _status(self, online: bool) -> str:
        return DeviceStatus(device_id=self.device_id, online=online, at=iso_utc(time.time())).model_dump_json()
