"""The outbox and its publisher against a real Mosquitto: nothing lost across broker outages."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt
import pytest

from edge_agent.outbox import Outbox
from edge_agent.publisher import OutboxPublisher
from tests.conftest import Broker


class Subscriber:
    """A persistent-session QoS 1 subscriber that records every sequence number it receives."""

    def __init__(self, broker: Broker, topic: str) -> None:
        self.seqs: list[int] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-sub", clean_session=False)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.seqs.append(orjson.loads(message.payload)["seq"])

    def wait_for(self, count: int, timeout: float = 30.0) -> set[int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(set(self.seqs)) >= count:
                    break
            time.sleep(0.05)
        with self._lock:
            return set(self.seqs)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _publisher(outbox: Outbox, broker: Broker) -> tuple[mqtt.Client, OutboxPublisher]:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-pub")
    publisher = OutboxPublisher(outbox, client, max_inflight=50)
    client.on_connect = lambda c, u, f, rc, p: publisher.on_connected() if not rc.is_failure else None
    client.on_disconnect = lambda c, u, f, rc, p: publisher.on_disconnected()
    client.on_publish = lambda c, u, mid, rc, p: publisher.on_published(mid)
    client.reconnect_delay_set(0.1, 0.5)
    client.connect_async(broker.host, broker.port)
    client.loop_start()
    publisher.start()
    return client, publisher


def _append(outbox: Outbox, count: int, stream: str = "telemetry") -> None:
    for _ in range(count):
        outbox.append(stream, "edgeloop/v1/devices/d1/telemetry", lambda seq: orjson.dumps({"seq": seq}))


def test_sequence_numbers_are_contiguous_and_survive_reopening(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db")
    _append(outbox, 3)
    outbox.close()
    reopened = Outbox(tmp_path / "outbox.db")
    _append(reopened, 2)
    assert [m.seq for m in reopened.pending(10)] == [1, 2, 3, 4, 5]
    assert reopened.last_seq("telemetry") == 5 and reopened.last_seq("events") == 0


def test_a_new_outbox_gets_an_epoch_that_survives_reopening_and_a_wiped_one_gets_a_later_one(tmp_path: Path) -> None:
    before = time.time_ns() // 1_000_000
    outbox = Outbox(tmp_path / "outbox.db")
    first = outbox.epoch
    assert before <= first <= time.time_ns() // 1_000_000
    _append(outbox, 2)
    outbox.close()
    reopened = Outbox(tmp_path / "outbox.db")
    assert reopened.epoch == first
    reopened.close()
    time.sleep(0.01)
    for path in tmp_path.glob("outbox.db*"):
        path.unlink()  # the state directory wiped: numbers restart, under a new epoch
    wiped = Outbox(tmp_path / "outbox.db")
    _append(wiped, 1)
    assert wiped.epoch > first and [m.seq for m in wiped.pending(10)] == [1]


def test_an_outbox_from_before_epochs_keeps_epoch_zero_and_its_numbers(tmp_path: Path) -> None:
    import sqlite3

    db = sqlite3.connect(tmp_path / "outbox.db")
    db.executescript(
        "CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, stream TEXT NOT NULL, seq INTEGER NOT NULL,"
        " topic TEXT NOT NULL, payload BLOB NOT NULL, UNIQUE (stream, seq));"
        "CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);"
        "INSERT INTO counters VALUES ('seq:telemetry', 41);"
    )
    db.commit()
    db.close()
    outbox = Outbox(tmp_path / "outbox.db")
    _append(outbox, 1)
    assert outbox.epoch == 0 and [m.seq for m in outbox.pending(10)] == [42]


def test_a_full_outbox_drops_oldest_windows_and_counts_them(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db", max_messages=10)
    _append(outbox, 2, stream="events")
    _append(outbox, 13)
    pending = outbox.pending(100)
    assert len(pending) == 10
    assert [m.seq for m in pending if m.stream == "events"] == [1, 2]  # events are never dropped
    assert [m.seq for m in pending if m.stream == "telemetry"] == list(range(6, 14))
    assert outbox.dropped == 5


def test_backlog_written_while_the_broker_is_down_is_delivered_in_full(tmp_path: Path, broker: Broker) -> None:
    subscriber = Subscriber(broker, "edgeloop/v1/devices/+/telemetry")
    time.sleep(0.3)
    broker.stop()
    outbox = Outbox(tmp_path / "outbox.db")
    client, publisher = _publisher(outbox, broker)
    _append(outbox, 3000)
    broker.start()
    publisher.wake()
    try:
        received = subscriber.wait_for(3000)
        assert received == set(range(1, 3001))
        deadline = time.monotonic() + 10
        while outbox.size() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert outbox.size() == 0
    finally:
        publisher.stop()
        client.loop_stop()
        subscriber.close()


def test_broker_restart_during_traffic_loses_nothing(tmp_path: Path, broker: Broker) -> None:
    subscriber = Subscriber(broker, "edgeloop/v1/devices/+/telemetry")
    outbox = Outbox(tmp_path / "outbox.db")
    client, publisher = _publisher(outbox, broker)
    try:
        for round_ in range(4):
            _append(outbox, 500)
            publisher.wake()
            if round_ == 1:
                broker.stop()
                time.sleep(1.0)
                _append(outbox, 500)
                broker.start()
        received = subscriber.wait_for(2500, timeout=40)
        assert received == set(range(1, 2501)), f"missing {sorted(set(range(1, 2501)) - received)[:10]}"
    finally:
        publisher.stop()
        client.loop_stop()
        subscriber.close()


@pytest.mark.parametrize("inflight", [1, 50])
def test_inflight_window_is_respected(tmp_path: Path, broker: Broker, inflight: int) -> None:
    outbox = Outbox(tmp_path / "outbox.db")
    subscriber = Subscriber(broker, "edgeloop/v1/devices/+/telemetry")
    client, publisher = _publisher(outbox, broker)
    publisher.max_inflight = inflight
    _append(outbox, 300)
    publisher.wake()
    try:
        assert subscriber.wait_for(300) == set(range(1, 301))
        deadline = time.monotonic() + 10
        while publisher.delivered < 300 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert publisher.delivered == 300 and outbox.size() == 0
    finally:
        publisher.stop()
        client.loop_stop()
        subscriber.close()
