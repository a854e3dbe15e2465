"""The cloud's outgoing MQTT connection: desired states and alerts, QoS 1, waiting for the broker's PUBACK.

`publish` raises ServiceUnavailableError when the broker does not acknowledge in time, so a rollout never
records a step the devices could not have seen. `publish_many` sends a batch (e.g. clearing thousands of
device-level desired topics) without a round trip per message: everything is queued, paho keeps up to
`max_inflight` unacknowledged, and every PUBACK is awaited at the end within one timeout.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from cloud_sync.ingest.subscriber import make_client
from contracts.errors import ServiceUnavailableError
from contracts.logs import log_event

__all__ = ["MqttPublisher"]

logger = logging.getLogger("edgeloop.cloud.publisher")


class MqttPublisher:
    def __init__(
        self,
        url: str,
        client_id: str = "edgeloop-cloud-control",
        username: str | None = None,
        password: str | None = None,
        max_inflight: int = 1000,
        ca_file: Path | None = None,
    ) -> None:
        self.url = url
        self.client, self.host, self.port = make_client(url, client_id, username, password, ca_file=ca_file)
        self.client.max_inflight_messages_set(max_inflight)  # the broker's receive maximum still applies
        self.connected = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect

    def start(self, wait_s: float = 5.0) -> MqttPublisher:
        self.client.connect_async(self.host, self.port, keepalive=30)
        self.client.loop_start()
        self.connected.wait(wait_s)
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def publish(self, topic: str, payload: bytes | str, retain: bool = True, timeout: float = 10.0) -> None:
        if not self.connected.wait(timeout):
            raise ServiceUnavailableError(f"MQTT broker {self.host}:{self.port} is unreachable; nothing was published")
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        try:
            info.wait_for_publish(timeout)
        except (RuntimeError, ValueError) as exc:
            raise ServiceUnavailableError(f"MQTT broker refused the publish on {topic}: {exc}") from None
        if not info.is_published():
            raise ServiceUnavailableError(
                f"MQTT broker {self.host}:{self.port} did not acknowledge {topic} in {timeout}s"
            )

    def publish_many(self, messages: list[tuple[str, bytes | str]], retain: bool = True, timeout: float = 30.0) -> None:
        """QoS 1 publishes of (topic, payload) pairs, all queued at once; returns when the broker acknowledged
        every one, else raises ServiceUnavailableError saying how many were not (they may still arrive)."""
        if not messages:
            return
        if not self.connected.wait(timeout):
            raise ServiceUnavailableError(f"MQTT broker {self.host}:{self.port} is unreachable; nothing was published")
        deadline = time.monotonic() + timeout
        sent = [(topic, self.client.publish(topic, payload, qos=1, retain=retain)) for topic, payload in messages]
        for topic, info in sent:
            try:
                info.wait_for_publish(max(0.0, deadline - time.monotonic()))
            except (RuntimeError, ValueError) as exc:
                raise ServiceUnavailableError(f"MQTT broker refused the publish on {topic}: {exc}") from None
        missing = [topic for topic, info in sent if not info.is_published()]
        if missing:
            raise ServiceUnavailableError(
                f"MQTT broker {self.host}:{self.port} did not acknowledge {len(missing)} of {len(sent)} "
                f"publishes in {timeout:g}s (first: {missing[0]})"
            )

    def _on_connect(self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            log_event(logger, "control connection refused", level=logging.WARNING, reason=str(reason))
            return
        self.connected.set()

    def _on_disconnect(self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        self.connected.clear()
        log_event(logger, "control connection lost", level=logging.WARNING, reason=str(reason))
