"""Drains the outbox to the broker at QoS 1 with a bounded number of messages in flight.

A message leaves the outbox only when its PUBACK arrives. On a disconnect, everything in flight is
forgotten and re-sent from the outbox after reconnecting, in order (at-least-once: the cloud de-duplicates
on (device, stream, seq)). Bounding the in-flight window keeps paho far from its 65,535 message-id limit,
past which it silently overwrites queued QoS 1 messages.

The drain thread sleeps on an event that every append, connection and PUBACK sets; it does not poll (a poll
every 0.5 s was a SQLite query and a GIL hand-off twice a second on an idle device). After a failed drain it
retries in 0.5 s, and otherwise looks at the outbox once every `IDLE_WAIT_S` as a safety net.
"""

from __future__ import annotations

import contextlib
import logging
import threading

import paho.mqtt.client as mqtt

from contracts.logs import log_event
from edge_agent.outbox import Outbox

__all__ = ["IDLE_WAIT_S", "OutboxPublisher"]

logger = logging.getLogger("edgeloop.agent.publisher")
IDLE_WAIT_S = 30.0
"""Longest sleep of the drain thread when nothing wakes it (a safety net: appends and PUBACKs wake it)."""
_RETRY_S = 0.5


class OutboxPublisher:
    def __init__(self, outbox: Outbox, client: mqtt.Client, max_inflight: int = 100) -> None:
        self.outbox = outbox
        self.client = client
        self.max_inflight = max_inflight
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._connected = False
        self._inflight: dict[int, int] = {}  # paho mid -> outbox id
        # paho calls on_publish while holding this (reentrant) lock; holding it around publish() + registering
        # the mid means a PUBACK can never be handled before we know which outbox row it acknowledges, and
        # PUBACKs of other messages (status, reported state) are simply not ours.
        self._paho_lock = getattr(client, "_out_message_mutex", None) or contextlib.nullcontext()
        self._last_sent = 0
        self._acked: list[int] = []  # outbox ids whose PUBACK arrived, deleted in batches by the drain thread
        self._thread: threading.Thread | None = None
        self.delivered = 0

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
        self._wake.set()

    def on_disconnected(self) -> None:
        with self._lock:
            self._connected = False
            self._inflight.clear()
            self._last_sent = 0

    def on_published(self, mid: int) -> None:
        with self._lock:
            message_id = self._inflight.pop(mid, None)
            if message_id is None:
                return
            self._acked.append(message_id)
        self._wake.set()

    def _delete_acknowledged(self) -> None:
        # A delete lost in a crash only means the message is sent again (at-least-once), never lost.
        with self._lock:
            acked, self._acked = self._acked, []
        self.outbox.acknowledge_many(acked)
        self.delivered += len(acked)

    def _run(self) -> None:
        wait = IDLE_WAIT_S
        while not self._stop.is_set():
            self._wake.wait(wait)
            self._wake.clear()
            try:
                self._drain()
                wait = IDLE_WAIT_S
            except Exception as exc:  # keep draining whatever happens; the outbox still has the data
                log_event(logger, "drain failed", level=logging.WARNING, error=str(exc))
                wait = _RETRY_S

    def _drain(self) -> None:
        while not self._stop.is_set():
            self._delete_acknowledged()
            with self._lock:
                if not self._connected:
                    return
                room = self.max_inflight - len(self._inflight)
                after = self._last_sent
            if room <= 0:
                return
            batch = self.outbox.pending(room, after_id=after)
            if not batch:
                return
            for message in batch:
                with self._paho_lock:
                    info = self.client.publish(message.topic, message.payload, qos=1)
                    if info.rc != mqtt.MQTT_ERR_SUCCESS:
                        return  # disconnected meanwhile; on_connected restarts from the oldest pending
                    with self._lock:
                        if not self._connected:
                            return
                        self._last_sent = message.id
                        self._inflight[info.mid] = message.id
