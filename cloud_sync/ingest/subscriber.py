"""The telemetry ingest: an MQTT 5 subscriber (paho-mqtt 2) feeding `IngestWriter` in batches.

- Telemetry and events arrive through the shared subscription `$share/edgeloop-ingest/edgeloop/v1/devices/+/
  {telemetry,events}`, so several ingest workers split the load. Reported state and status are retained
  messages, which MQTT 5 never delivers to a shared subscription, so every worker subscribes to them
  directly (they are upserts: receiving them twice changes nothing).
- Persistent session (clean_start=False, long session expiry) and manual acknowledgement: a message is
  PUBACKed only after the transaction holding it has committed, so a crash or restart loses nothing (the
  broker redelivers, the writer de-duplicates on (device, epoch, seq)).
- One writer thread drains the queue in batches (`ingest_batch`); a database outage is retried with backoff
  without acknowledging anything; a batch that fails for another reason is retried message by message and
  a message that still fails becomes a dead letter. The ingest never dies on a bad message.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
import sqlalchemy as sa
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cloud_sync.ingest.acks import AckSender
from cloud_sync.ingest.clocks import sent_at
from cloud_sync.ingest.writer import BatchResult, Incoming, IngestWriter
from cloud_sync.store.db import Store
from contracts.logs import log_event
from contracts.topics import PREFIX

__all__ = ["Ingest", "IngestStats", "make_client"]

logger = logging.getLogger("edgeloop.cloud.ingest")
SESSION_EXPIRY_S = 7 * 24 * 3600


def make_client(
    url: str,
    client_id: str,
    username: str | None = None,
    password: str | None = None,
    *,
    manual_ack: bool = False,
    ca_file: Path | None = None,
) -> tuple[mqtt.Client, str, int]:
    """A paho MQTT 5 client for `url` (mqtt:// or mqtts://; the broker's certificate checked against `ca_file`,
    default the system's CAs), not yet connected; returns (client, host, port)."""
    parts = urlsplit(url)
    tls = parts.scheme == "mqtts"
    host, port = parts.hostname or "localhost", parts.port or (8883 if tls else 1883)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5, manual_ack=manual_ack)
    if username or parts.username:
        client.username_pw_set(username or parts.username, password or parts.password)
    if tls:
        client.tls_set(ca_certs=str(ca_file) if ca_file else None)
    client.reconnect_delay_set(1, 30)
    return client, host, port


class IngestStats:
    """Counters since start (read by the API, the bench and tests)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.received = 0
        self.windows = 0
        self.events = 0
        self.duplicates = 0
        self.dead = 0
        self.gaps = 0
        self.batches = 0
        self.last_lag_s = 0.0
        self.max_lag_s = 0.0
        self.db_errors = 0

    def add(self, result: BatchResult, lag: float) -> None:
        with self.lock:
            self.windows += result.windows
            self.events += result.events
            self.duplicates += result.duplicates
            self.dead += result.dead
            self.gaps += result.gaps
            self.batches += 1
            self.last_lag_s = lag
            self.max_lag_s = max(self.max_lag_s, lag)

    def as_dict(self) -> dict[str, Any]:
        with self.lock:
            return {key: value for key, value in vars(self).items() if key != "lock"}


class Ingest:
    def __init__(
        self,
        store: Store,
        mqtt_url: str,
        client_id: str = "edgeloop-cloud-ingest-1",
        share_group: str | None = None,
        batch: int = 500,
        username: str | None = None,
        password: str | None = None,
        ca_file: Path | None = None,
        *,
        ack_interval_s: float | None = 1.0,
        clock_tolerance_s: float = 2.0,
    ) -> None:
        self.writer = IngestWriter(store, clock_tolerance_s=clock_tolerance_s)
        self.batch = batch
        self.share_group = share_group
        self.stats = IngestStats()
        self.connected = threading.Event()
        self.on_batch: Callable[[BatchResult], None] | None = None
        self._queue: queue.Queue[Incoming] = queue.Queue()
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._thread = threading.Thread(target=self._run, name="edgeloop-ingest-writer", daemon=True)
        self.client, self.host, self.port = make_client(
            mqtt_url, client_id, username, password, manual_ack=True, ca_file=ca_file
        )
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        # End-to-end acknowledgement (docs/mqtt.md); None = off, as a cloud from before it.
        self.acks = AckSender(self.client, ack_interval_s) if ack_interval_s is not None else None

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> None:
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = SESSION_EXPIRY_S
        self._thread.start()
        self.client.connect_async(self.host, self.port, keepalive=30, clean_start=False, properties=properties)
        self.client.loop_start()
        log_event(logger, "ingest connecting", broker=f"{self.host}:{self.port}", share=self.share_group)

    def stop(self, timeout: float = 10.0) -> None:
        """Write what is queued, then disconnect (unacknowledged messages stay with the broker's session)."""
        self.wait_idle(timeout)
        self._stop.set()
        self._thread.join(timeout)
        if self.acks is not None:
            self.acks.flush(force=True)
        self.client.disconnect()
        self.client.loop_stop()

    def wait_idle(self, timeout: float) -> bool:
        """True once everything received so far is written (for orderly shutdown, tests and the bench)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._queue.empty() and self._idle.is_set():
                return True
            time.sleep(0.01)
        return False

    # -- paho callbacks (network thread) ------------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, _userdata: Any, flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            log_event(logger, "ingest connection refused", level=logging.WARNING, reason=str(reason))
            return
        # A plain subscription in a persistent session by default: Mosquitto 2.0 persists it across a broker
        # restart and queues what arrives meanwhile. Its shared subscriptions ($share/...) are not restored after
        # a restart, so windows published before the ingest resubscribes would be acknowledged and lost;
        # share_group (several workers splitting the load) is for brokers that persist them (EMQX, HiveMQ).
        shared = f"$share/{self.share_group}/{PREFIX}/devices/+" if self.share_group else f"{PREFIX}/devices/+"
        client.subscribe(
            [
                (f"{shared}/telemetry", 1),
                (f"{shared}/events", 1),
                (f"{shared}/feedback", 1),
                (f"{PREFIX}/devices/+/reported", 1),
                (f"{PREFIX}/devices/+/status", 1),
            ]
        )
        self.connected.set()
        log_event(logger, "ingest connected", session_present=bool(getattr(flags, "session_present", False)))

    def _on_disconnect(self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        self.connected.clear()
        if self._stop.is_set():  # our own stop(): not a fault
            log_event(logger, "ingest stopped", reason=str(reason))
        else:
            log_event(logger, "ingest disconnected", level=logging.WARNING, reason=str(reason))

    def _on_message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        self._idle.clear()
        received = time.time()
        sent = sent_at(message)
        self._queue.put(Incoming(message.topic, bytes(message.payload), received, message.mid, message.qos, sent))

    # -- writer thread ------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            if self.acks is not None:
                self.acks.flush()
            try:
                first = self._queue.get(timeout=0.2)
            except queue.Empty:
                self._idle.set()
                continue
            batch = [first]
            while len(batch) < self.batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self._write(batch)
            for item in batch:
                if item.qos:
                    self.client.ack(item.mid, item.qos)
            with self.stats.lock:
                self.stats.received += len(batch)
            if self._queue.empty():
                self._idle.set()

    def _write(self, batch: list[Incoming]) -> None:
        delay = 0.5
        while not self._stop.is_set():
            try:
                result = self.writer.write(batch)
                break
            except sa.exc.OperationalError as exc:  # the database is down or locked: retry, ack nothing
                with self.stats.lock:
                    self.stats.db_errors += 1
                log_event(
                    logger,
                    "store unavailable, retrying",
                    level=logging.WARNING,
                    error=str(exc.orig).splitlines()[0] if exc.orig else str(exc),
                    retry_in_s=delay,
                )
                time.sleep(delay)
                delay = min(delay * 2, 10.0)
            except Exception:  # a bug or a constraint: isolate the bad message(s)
                logger.exception("batch failed, retrying one message at a time")
                result = self._write_one_by_one(batch)
                break
        else:
            return
        lag = time.time() - min(item.received_at for item in batch)
        self.stats.add(result, lag)
        for reason in result.dead_reasons[:5]:
            log_event(logger, "dead letter", level=logging.WARNING, reason=reason)
        if self.acks is not None:
            self.acks.add(result.acks)
        if self.on_batch is not None:
            self.on_batch(result)

    def _write_one_by_one(self, batch: list[Incoming]) -> BatchResult:
        total = BatchResult()
        for item in batch:
            try:
                result = self.writer.write([item])
            except sa.exc.OperationalError:
                raise
            except Exception as exc:
                self.writer.write_dead(item, f"ingest error: {type(exc).__name__}: {exc}")
                result = BatchResult(dead=1, dead_reasons=[str(exc)])
            for name in ("windows", "events", "duplicates", "dead", "states", "gaps"):
                setattr(total, name, getattr(total, name) + getattr(result, name))
            total.dead_reasons.extend(result.dead_reasons)
            total.acks.update(result.acks)
        return total
