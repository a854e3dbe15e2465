"""Publishing the end-to-end acknowledgements: after the ingest committed a batch, every device it touched is
told its watermarks (`CloudAck`, retained on edgeloop/v1/devices/{id}/ack, QoS 1), at most once per
`interval_s` per device: a burst of windows costs one message per device and interval, never one per window.
A duplicate counts as touching the device (its sender missed our last acknowledgement and needs another)."""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime

import paho.mqtt.client as mqtt

from contracts.logs import log_event
from contracts.messages import CloudAck
from contracts.topics import device_topic

__all__ = ["AckSender"]

logger = logging.getLogger("edgeloop.cloud.acks")


class AckSender:
    def __init__(self, client: mqtt.Client, interval_s: float = 1.0) -> None:
        self.client = client
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._pending: dict[str, tuple[int, dict[str, int]]] = {}  # device -> (epoch, watermarks)
        self._next = 0.0
        self.published = 0

    def add(self, acks: dict[tuple[str, int], dict[str, int]]) -> None:
        """Watermarks committed by a batch; a device's newest epoch wins."""
        with self._lock:
            for (device, epoch), marks in acks.items():
                known = self._pending.get(device)
                if known is None or epoch >= known[0]:
                    self._pending[device] = (epoch, marks)

    def flush(self, force: bool = False) -> int:
        """Publish what is pending when the interval has passed (or `force`); returns how many were sent."""
        now = time.monotonic()
        with self._lock:
            if not self._pending or (not force and now < self._next) or not self.client.is_connected():
                return 0
            pending, self._pending = self._pending, {}
            self._next = now + self.interval_s
        at = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        for device, (epoch, marks) in pending.items():
            ack = CloudAck(device_id=device, epoch=epoch, watermarks=marks, at=at)
            info = self.client.publish(device_topic(device, "ack"), ack.model_dump_json(), qos=1, retain=True)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:  # disconnected meanwhile: keep it for the next flush
                self.add({(device, epoch): marks})
                log_event(logger, "acknowledgement not sent, kept", level=logging.DEBUG, device=device)
            else:
                self.published += 1
        return len(pending)
