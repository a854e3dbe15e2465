"""Drains the outbox to the broker at QoS 1 with a bounded number of messages in flight.

A message leaves the outbox only when its PUBACK arrives. On a disconnect, everything in flight is
forgotten and re-sent from the outbox after reconnecting, in order (at-least-once: the cloud de-duplicates
on (device, stream, seq)). Bounding the in-flight window keeps paho far from its 65,535 message-id limit,
past which it silently overwrites queued QoS 1 messages.

A PUBACK with a failure reason code (MQTT 5, >= 0x80: the broker's ACL refused the topic, its quota is
exceeded, ...) deletes nothing: the message is marked refused in the outbox and held back for `refused_retry_s`
(then offered once more; every reconnection releases all of them), the refusal is counted, handed to
`on_refused` (the agent's metrics) and logged once per topic and reason. A refusal is a configuration error to
fix on the broker; the message waits for it.

The drain thread sleeps on an event that every append, connection and PUBACK sets; it does not poll (a poll
every 0.5 s was a SQLite query and a GIL hand-off twice a second on an idle device). After a failed drain it
retries in 0.5 s, and otherwise looks at the outbox once every `IDLE_WAIT_S` as a safety net.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from contracts.logs import log_event
from edge_agent.clock import wall_time
from edge_agent.cloud_ack import CloudAckTracker
from edge_agent.outbox import Outbox, PendingMessage

__all__ = ["IDLE_WAIT_S", "OutboxPublisher", "reason_name"]

logger = logging.getLogger("edgeloop.agent.publisher")
IDLE_WAIT_S = 30.0
"""Longest sleep of the drain thread when nothing wakes it (a safety net: appends and PUBACKs wake it)."""
_RETRY_S = 0.5
_FIX = "grant the topic to this device in the broker's ACL (deploy/mosquitto/acl.head)"


def reason_name(code: int) -> str:
    """0x87 -> 'Not authorized' (MQTT 5 PUBACK reason codes)."""
    try:
        return str(ReasonCode(PacketTypes.PUBACK, identifier=code))
    except KeyError:
        return f"reason code {code:#x}"


class OutboxPublisher:
    def __init__(
        self,
        outbox: Outbox,
        client: mqtt.Client,
        max_inflight: int = 100,
        refused_retry_s: float = 300.0,
        *,
        acks: CloudAckTracker | None = None,
    ) -> None:
        self.outbox = outbox
        self.acks = acks
        """End-to-end acknowledgement (edge_agent.cloud_ack); None = delete on PUBACK."""
        self.client = client
        self.max_inflight = max_inflight
        self.refused_retry_s = refused_retry_s
        self.on_refused: Callable[[str, int], None] = lambda _stream, _code: None
        """Called (drain thread) once per refused publish with the message's stream and the reason code."""
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._connected = False
        self._inflight: dict[int, tuple[int, str, str]] = {}  # paho mid -> (outbox id, stream, topic)
        # paho calls on_publish while holding this (reentrant) lock; holding it around publish() + registering
        # the mid means a PUBACK can never be handled before we know which outbox row it acknowledges, and
        # PUBACKs of other messages (status, reported state) are simply not ours.
        self._paho_lock = getattr(client, "_out_message_mutex", None) or contextlib.nullcontext()
        self._last_sent = 0
        self._acked: list[int] = []  # outbox ids whose PUBACK arrived, deleted in batches by the drain thread
        self._refused: list[tuple[int, str, str, int]] = []  # (outbox id, stream, topic, reason code)
        self._logged_refusals: set[tuple[str, int]] = set()
        self._release = False  # set on (re)connection: refused messages go out again with the rest
        self._thread: threading.Thread | None = None
        self.delivered = 0
        self.refused = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="outbox-publisher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout)
        self._delete_acknowledged()

    def wake(self) -> None:
        """Call after appending to the outbox."""
        self._wake.set()

    # Called from the MQTT client's callbacks (network thread).
    def on_connected(self) -> None:
        with self._lock:
            self._connected = True
            self._inflight.clear()
            self._last_sent = 0
            self._release = True
        if self.acks is not None:
            self.acks.on_connected()
        self._wake.set()

    def on_disconnected(self) -> None:
        with self._lock:
            self._connected = False
            self._inflight.clear()
            self._last_sent = 0

    def on_published(self, mid: int, reason_code: int = 0) -> bool:
        """A PUBACK arrived; False when `mid` is not an outbox message (status, reported state)."""
        with self._lock:
            entry = self._inflight.pop(mid, None)
            if entry is None:
                return False
            if reason_code >= 0x80:
                self._refused.append((*entry, reason_code))
            else:
                self._acked.append(entry[0])
        self._wake.set()
        return True

    def _delete_acknowledged(self) -> None:
        # A delete lost in a crash only means the message is sent again (at-least-once), never lost.
        with self._lock:
            acked, self._acked = self._acked, []
            refused, self._refused = self._refused, []
        if self.acks is not None and self.acks.keep:
            self.outbox.mark_sent(acked, time.time())  # until the cloud's watermark covers them
        else:
            self.outbox.acknowledge_many(acked)
            self.delivered += len(acked)
        if refused:
            self.outbox.refuse_many([(r[0], r[3]) for r in refused], time.time() + self.refused_retry_s)
            self.refused += len(refused)
            for _id, stream, topic, code in refused:
                self.on_refused(stream, code)
                if (topic, code) not in self._logged_refusals:
                    self._logged_refusals.add((topic, code))
                    log_event(logger, "publish refused by the broker, message kept in the outbox",
                              level=logging.ERROR, topic=topic, code=hex(code), reason=reason_name(code),
                              retry_s=self.refused_retry_s, fix=_FIX)  # fmt: skip

    def _run(self) -> None:
        wait = IDLE_WAIT_S
        while not self._stop.is_set():
            # A refused message is offered again after refused_retry_s, kept ones after the ack timeout: wake up
            # for them even when idle.
            if self.refused:
                wait = min(wait, self.refused_retry_s)
            if self.acks is not None:
                wait = min(wait, self.acks.next_wake())
            self._wake.wait(wait)
            self._wake.clear()
            try:
                self._drain()
                wait = IDLE_WAIT_S
            except Exception as exc:  # keep draining whatever happens; the outbox still has the data
                log_event(logger, "drain failed", level=logging.WARNING, error=str(exc))
                wait = _RETRY_S

    def _drain(self) -> None:
        with self._lock:
            release, self._release = self._release, False
        if release:
            self.outbox.release_refused()
        if self.acks is not None and self.acks.step():
            with self._lock:
                self._last_sent = 0  # kept messages are pending again: start over from the oldest
        while not self._stop.is_set():
            self._delete_acknowledged()
            with self._lock:
                if not self._connected:
                    return
                room = self.max_inflight - len(self._inflight)
                after = self._last_sent
            if room <= 0:
                return
            now = time.time()
            retries = self.outbox.due_refused(room, now, now + self.refused_retry_s)
            if retries and not self._send(retries, advance=False):
                return
            batch = self._pending(room - len(retries), after) if room > len(retries) else []
            if not batch:
                return
            if not self._send(batch, advance=True):
                return

    def _pending(self, room: int, after: int) -> list[PendingMessage]:
        """The oldest pending messages past the cursor, without those in flight (after a restart from the oldest
        the cursor no longer skips them)."""
        with self._lock:
            inflight = {entry[0] for entry in self._inflight.values()}
        batch = self.outbox.pending(room + len(inflight), after_id=after)
        return [message for message in batch if message.id not in inflight][:room]

    def _send(self, batch: list[PendingMessage], *, advance: bool) -> bool:
        """Publish `batch` in order; False when the connection went away meanwhile."""
        for message in batch:
            with self._paho_lock:
                info = self.client.publish(message.topic, message.payload, qos=1, properties=_sent_now())
                if info.rc != mqtt.MQTT_ERR_SUCCESS:
                    return False  # disconnected meanwhile; on_connected restarts from the oldest pending
                with self._lock:
                    if not self._connected:
                        return False
                    if advance:
                        self._last_sent = message.id
                    self._inflight[info.mid] = (message.id, message.stream, message.topic)
        return True


def _sent_now() -> Properties:
    """The MQTT 5 user property `sent_at_ms`: this device's clock at the publish (the cloud measures the device's
    clock offset from it; docs/mqtt.md). Stamped on each send, so a message resent from the outbox says when."""
    properties = Properties(PacketTypes.PUBLISH)
    properties.UserProperty = ("sent_at_ms", str(round(wall_time() * 1000)))
    return properties
