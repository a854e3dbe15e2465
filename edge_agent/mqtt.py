"""MQTT transport of the agent (paho-mqtt 2, MQTT 5, callback API v2): desired state in, state and events out.

Subscribes to the retained desired-state topics of its group and of itself; the device-level one wins
while it is set (an empty retained message clears it and the group's applies again). With a key set to keep
(`on_key_set`), it also subscribes to the fleet's signed key set (`edgeloop/v1/keys`). Publishes online
status (retained, with a retained `offline` last will), reported state (retained) and events (QoS 1).
Connection runs on paho's thread with exponential reconnect backoff; updates are handed to the
`UpdateWorker`, never run on the network thread. No business logic here.

MQTT 5 because its PUBACK carries a reason code: a broker that refuses a publish (ACL: 0x87 not authorized)
says so, where MQTT 3.1.1 acknowledges it like any other and the outbox would delete it. Refused outbox
messages are kept (edge_agent.publisher); a refused status or reported state is logged once per topic.

With `mqtt_predict` on it also subscribes to its predict topic and hands each request, as a `PredictRequest`, to
`on_predict` (edge_agent/mqtt_predict.py answers it through `publish_answer`).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import ValidationError

from contracts.keyset import KEYS_TOPIC, KeySetMessage
from contracts.logs import log_event
from contracts.messages import CloudAck, DesiredState, DeviceEvent, DeviceStatus, ReportedState
from contracts.topics import device_topic, group_desired, predict_response_topic
from edge_agent.cloud_ack import CloudAckTracker
from edge_agent.outbox import Outbox
from edge_agent.publisher import OutboxPublisher, reason_name
from edge_agent.reporting import EventCounter, make_event, utc_now
from edge_agent.settings import AgentSettings

__all__ = ["MqttSync", "PredictRequest"]

logger = logging.getLogger("edgeloop.agent.mqtt")
QOS = 1


@dataclass(frozen=True)
class PredictRequest:
    """A prediction request as it came off the predict topic (MQTT 5 properties read, nothing parsed yet)."""

    payload: bytes
    response_topic: str
    """The request's MQTT 5 response topic, else the device's `.../predict/response`."""
    correlation: bytes | None
    """The request's correlation data, echoed in the answer."""
    request_key: str | None
    """The A/B request key: the user property `X-Request-Key` (as the REST header)."""
    qos: int
    """The answer's QoS: the request's, at most 1."""


class MqttSync:
    """Implements `Reporter`; calls `on_desired(state)` whenever the effective desired state changes."""

    def __init__(self, settings: AgentSettings, counter: EventCounter, outbox: Outbox | None = None) -> None:
        if not settings.mqtt_url:
            raise ValueError("MqttSync needs settings.mqtt_url")
        self.settings = settings
        self.counter = counter
        self.device_id = settings.device_id
        self.on_desired: Callable[[DesiredState], None] = lambda _desired: None
        self.on_key_set: Callable[[KeySetMessage], None] | None = None
        self.on_predict: Callable[[PredictRequest], None] | None = None
        """Set before start() to answer predictions over MQTT (setting mqtt_predict)."""
        self.predict_topic = device_topic(self.device_id, "predict")
        self.reported_provider: Callable[[], ReportedState] | None = None
        self.group_topic = group_desired(settings.group)
        self.device_desired_topic = device_topic(self.device_id, "desired")
        self._desired: dict[str, DesiredState] = {}
        self._lock = threading.Lock()
        self._reported: ReportedState | None = None
        self._reported_lock = threading.Lock()
        self.connected = threading.Event()
        self.client = self._make_client()
        self._paho_lock = getattr(self.client, "_out_message_mutex", None) or contextlib.nullcontext()
        self.outbox = outbox
        self.acks = (
            CloudAckTracker(outbox, settings.ack_resend_s, settings.ack_fallback_s)
            if outbox is not None and settings.cloud_ack
            else None
        )
        self.ack_topic = device_topic(self.device_id, "ack")
        self.publisher = (
            OutboxPublisher(
                outbox, self.client, settings.outbox_max_inflight, settings.outbox_refused_retry_s, acks=self.acks
            )
            if outbox
            else None
        )
        self._direct: dict[int, str] = {}  # mid -> topic of status / reported publishes, for refusals
        self._refused_topics: set[str] = set()

    # -- lifecycle ----------------------------------------------------------------------------------
    def _make_client(self) -> mqtt.Client:
        s = self.settings
        url = urlsplit(s.mqtt_url or "")
        tls = url.scheme == "mqtts"
        self.host, self.port = url.hostname or "localhost", url.port or (8883 if tls else 1883)
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"edgeloop-agent-{self.device_id}", protocol=mqtt.MQTTv5
        )
        if s.mqtt_username or url.username:
            client.username_pw_set(s.mqtt_username or url.username, s.mqtt_password or url.password)
        if tls:
            client.tls_set(
                ca_certs=str(s.mqtt_ca_file) if s.mqtt_ca_file else None,
                certfile=str(s.mqtt_cert_file) if s.mqtt_cert_file else None,
                keyfile=str(s.mqtt_key_file) if s.mqtt_key_file else None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        client.will_set(self._topic("status"), self._status(False), qos=QOS, retain=True)
        client.reconnect_delay_set(s.mqtt_reconnect_min_s, s.mqtt_reconnect_max_s)  # type: ignore[arg-type]
        client.max_queued_messages_set(1000)
        client.on_socket_open = _no_delay
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        return client

    def start(self) -> None:
        """Connect in the background; the agent serves whether or not the broker is reachable."""
        if self.publisher is not None:
            self.publisher.start()
        self.client.connect_async(self.host, self.port, keepalive=self.settings.mqtt_keepalive_s)
        self.client.loop_start()
        log_event(logger, "mqtt connecting", broker=f"{self.host}:{self.port}", device=self.device_id)

    def stop(self, timeout: float = 3.0) -> None:
        """Drain the outbox briefly, publish `offline` (retained) and disconnect; the last will covers a crash.

        Whatever is not acknowledged stays in the outbox and is sent after the next start."""
        if self.publisher is not None and self.outbox is not None:
            deadline = time.monotonic() + timeout
            while self.connected.is_set() and self.outbox.unsent() and time.monotonic() < deadline:
                self.publisher.wake()
                time.sleep(0.05)
            self.publisher.stop()
        if self.connected.is_set():
            info = self._publish_direct(self._topic("status"), self._status(False))
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(timeout)
        self.client.disconnect()
        self.client.loop_stop()

    # -- Reporter -----------------------------------------------------------------------------------
    def publish_event(self, kind: str, **fields: Any) -> DeviceEvent:
        """The one way events leave the device (an on-disk outbox can replace the body later)."""
        if self.outbox is None:
            event = make_event(self.device_id, self.counter.next(), kind, **fields)
            self.client.publish(self._topic("events"), event.model_dump_json(), qos=QOS)
            return event
        made: list[DeviceEvent] = []
        outbox = self.outbox

        def build(seq: int) -> bytes:
            made.append(make_event(self.device_id, seq, kind, epoch=outbox.epoch, **fields))
            return made[-1].model_dump_json().encode()

        # Durable first (the outbox), delivered by the publisher; sequence numbers come from the outbox.
        outbox.append("events", self._topic("events"), build)
        if self.publisher is not None:
            self.publisher.wake()
        return made[-1]

    def publish_reported(self, state: ReportedState) -> None:
        """Retained; only the freshest state is sent, and only while connected (on_connect sends it then),
        so a state queued during an outage can never overwrite a newer one after the reconnection."""
        with self._reported_lock:
            if self._reported is None or state.updated_at >= self._reported.updated_at:
                self._reported = state
            if self.connected.is_set():
                self._send_reported()

    def _send_reported(self) -> None:
        if self._reported is not None:
            self._publish_direct(self._topic("reported"), self._reported.model_dump_json().encode())

    # -- paho callbacks (network thread) ------------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            log_event(logger, "mqtt connection refused", level=logging.WARNING, reason=str(reason))
            return
        topics = [(self.group_topic, QOS), (self.device_desired_topic, QOS)]
        if self.on_key_set is not None:  # first: the broker sends retained messages in this order, so a device
            topics.insert(0, (KEYS_TOPIC, QOS))  # back after a rotation knows the new set before the desired state
        if self.acks is not None:
            topics.append((self.ack_topic, QOS))
        if self.on_predict is not None:
            topics.append((self.predict_topic, QOS))
        client.subscribe(topics)
        if self.publisher is not None:
            self.publisher.on_connected()
        self._publish_direct(self._topic("status"), self._status(True))
        with self._reported_lock:
            if self.reported_provider is not None:
                fresh = self.reported_provider()
                if self._reported is None or fresh.updated_at >= self._reported.updated_at:
                    self._reported = fresh
            self._send_reported()  # queued before `connected` is announced: the fresh state goes out first
            self.connected.set()
        log_event(logger, "mqtt connected", broker=f"{self.host}:{self.port}", group=self.settings.group)

    def _on_disconnect(self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        with self._reported_lock:
            self.connected.clear()
        if self.publisher is not None:
            self.publisher.on_disconnected()
        log_event(logger, "mqtt disconnected", level=logging.WARNING, reason=str(reason))

    def _on_publish(self, _client: mqtt.Client, _userdata: Any, mid: int, reason: Any, _props: Any) -> None:
        code = int(getattr(reason, "value", 0))
        if self.publisher is not None and self.publisher.on_published(mid, code):
            return
        topic = self._direct.pop(mid, None)
        if code >= 0x80 and topic is not None and topic not in self._refused_topics:
            self._refused_topics.add(topic)
            log_event(logger, "publish refused by the broker", level=logging.ERROR, topic=topic, code=hex(code),
                      reason=reason_name(code), fix="grant the topic to this device in the broker's ACL")  # fmt: skip

    def _on_message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        if message.topic == self.ack_topic:
            self._on_ack(bytes(message.payload))
            return
        if message.topic == KEYS_TOPIC:
            self._on_keys(bytes(message.payload))
            return
        if message.topic == self.predict_topic:
            if self.on_predict is not None:
                self.on_predict(self._predict_request(message))
            return
        level = "device" if message.topic == self.device_desired_topic else "group"
        if not message.payload:
            with self._lock:
                self._desired.pop(level, None)
            log_event(logger, "desired state cleared", level=logging.INFO, scope=level)
        else:
            try:
                desired = DesiredState.model_validate_json(message.payload)
            except ValidationError as exc:
                first = exc.errors()[0]
                reason = f"desired state on {message.topic} is malformed at {first['loc']}: {first['msg']}"
                log_event(logger, "desired state ignored", level=logging.WARNING, reason=reason)
                self.publish_event("rejected", reason=reason, details={"topic": message.topic})
                return
            with self._lock:
                self._desired[level] = desired
        with self._lock:
            effective = self._desired.get("device") or self._desired.get("group")
        if effective is not None:
            self.on_desired(effective)

    def _on_keys(self, payload: bytes) -> None:
        if self.on_key_set is None or not payload:
            return
        try:
            message = KeySetMessage.model_validate_json(payload)
        except ValidationError as exc:
            first = exc.errors()[0]
            reason = f"key set on {KEYS_TOPIC} is malformed at {first['loc']}: {first['msg']}"
            log_event(logger, "key set refused", level=logging.ERROR, reason=reason)
            self.publish_event("rejected", reason=reason, details={"topic": KEYS_TOPIC})
            return
        self.on_key_set(message)

    def _on_ack(self, payload: bytes) -> None:
        if self.acks is None or self.publisher is None or not payload:
            return
        try:
            ack = CloudAck.model_validate_json(payload)
        except ValidationError as exc:
            log_event(logger, "acknowledgement ignored", level=logging.WARNING, reason=str(exc.errors()[0]["msg"]))
            return
        if self.acks.on_ack(ack):
            self.publisher.wake()

    def _predict_request(self, message: mqtt.MQTTMessage) -> PredictRequest:
        props = getattr(message, "properties", None)
        response_topic = getattr(props, "ResponseTopic", None) or predict_response_topic(self.device_id)
        correlation = getattr(props, "CorrelationData", None)
        key = next((v for k, v in getattr(props, "UserProperty", None) or () if k.lower() == "x-request-key"), None)
        return PredictRequest(bytes(message.payload), response_topic, correlation, key, min(message.qos, QOS))

    def publish_answer(self, request: PredictRequest, payload: bytes, content_type: str) -> None:
        """Answer a predict request on its response topic with its correlation data (not retained, not through the
        outbox: an answer nobody is waiting for any more is worth nothing); a refusal by the broker is logged."""
        properties = Properties(PacketTypes.PUBLISH)
        properties.ContentType = content_type
        if request.correlation is not None:
            properties.CorrelationData = request.correlation
        self._publish_direct(request.response_topic, payload, retain=False, qos=request.qos, properties=properties)

    # -- helpers ------------------------------------------------------------------------------------
    def _publish_direct(
        self, topic: str, payload: bytes, *, retain: bool = True, qos: int = QOS, properties: Properties | None = None
    ) -> mqtt.MQTTMessageInfo:
        """A QoS 1 publish outside the outbox (status, reported state: retained; predict answers); a refusal by the
        broker is logged once per topic."""
        with self._paho_lock:  # the PUBACK cannot be handled before the mid is known
            info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
            if info.rc == mqtt.MQTT_ERR_SUCCESS:
                if len(self._direct) > 1000:  # PUBACKs lost with a connection leave entries behind
                    self._direct.clear()
                self._direct[info.mid] = topic
        return info

    def _topic(self, kind: str) -> str:
        return device_topic(self.device_id, kind)

    def _status(self, online: bool) -> bytes:
        return DeviceStatus(device_id=self.device_id, online=online, at=utc_now()).model_dump_json().encode()


def _no_delay(_client: mqtt.Client, _userdata: Any, sock: Any) -> None:
    """TCP_NODELAY on the broker connection: with Nagle's algorithm a predict answer written right after the
    request's PUBACK waits for the broker's delayed ACK (~40 ms) before it leaves (bench/bench_mqtt_predict.py)."""
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
