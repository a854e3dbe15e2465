"""End-to-end acknowledgement (issue 15) with real parts: the cloud's ingest on SQLite and PostgreSQL tells a device
its watermark (retained, batched, after the commit; a hole stops it, filling the hole walks it over what is
stored); an agent keeps what the broker acknowledged until the watermark covers it; an agent facing a cloud
without acknowledgements falls back to deleting on PUBACK after its timeout and says so once."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cloud_sync.fleet.simulator import make_window
from cloud_sync.ingest.subscriber import Ingest
from cloud_sync.store.db import Store
from contracts.messages import CloudAck
from contracts.topics import device_topic
from tests.agent_helpers import AgentServer, record_of
from tests.cloud_support import Publisher, make_store, wait_until
from tests.conftest import Broker, TrainedBundle

EPOCH = 1_765_000_000_000


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    with make_store(request.param, tmp_path) as instance:
        yield instance


class AckWatcher:
    """Records every acknowledgement the cloud publishes for one device."""

    def __init__(self, broker: Broker, device: str) -> None:
        self.acks: list[CloudAck] = []
        subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"ack-{time.monotonic_ns()}")
        self.client.on_message = lambda _c, _u, m: self.acks.append(CloudAck.model_validate_json(m.payload))
        self.client.on_subscribe = lambda *_a: subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.subscribe(device_topic(device, "ack"), qos=1)
        self.client.loop_start()
        assert subscribed.wait(5)

    def wait_for(self, stream: str, seq: int) -> CloudAck:
        wait_until(lambda: self.acks and self.acks[-1].watermarks.get(stream) == seq, 10, f"watermark {seq}")
        return self.acks[-1]

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _window(seq: int, floor: int | None = None) -> bytes:
    window = make_window("dev-a", "line-a", seq, time.time() + seq)
    window = window.model_copy(update={"epoch": EPOCH, "outbox_floor": floor})
    return window.model_dump_json().encode()


def test_the_watermark_stops_at_a_hole_walks_on_when_it_is_filled_and_is_batched(store: Store, broker: Broker) -> None:
    ingest = Ingest(store, broker.url, client_id="ack-ingest", batch=50, ack_interval_s=0.5)
    ingest.start()
    wait_until(ingest.connected.is_set, what="ingest connected")
    watcher, pub = AckWatcher(broker, "dev-a"), Publisher(broker.host, broker.port)
    topic = device_topic("dev-a", "telemetry")
    try:
        for seq in (1, 2, 3, 5, 6):
            pub.send(topic, _window(seq))
        ack = watcher.wait_for("telemetry", 3)  # 4 is missing: 5 and 6 are stored but not covered
        assert ack.device_id == "dev-a" and ack.epoch == EPOCH
        time.sleep(1.0)
        assert watcher.acks[-1].watermarks == {"telemetry": 3}
        pub.send(topic, _window(4))  # the hole is filled: the watermark walks over 5 and 6, already stored
        watcher.wait_for("telemetry", 6)
        before = len(watcher.acks)
        for seq in range(7, 207):  # a burst of 200 windows: a handful of acknowledgements, not 200
            pub.client.publish(topic, _window(seq), qos=1)
        watcher.wait_for("telemetry", 206)
        assert len(watcher.acks) - before <= 10, len(watcher.acks) - before
        pub.send(topic, _window(100))  # a duplicate: acknowledged again (its sender missed the last one)
        wait_until(lambda: len(watcher.acks) > before + 1 and watcher.acks[-1].watermarks["telemetry"] == 206, 5)
        # 207-209 dropped by the device's full outbox (it holds nothing below 210): the hole does not stop it.
        pub.send(topic, _window(211, floor=210))
        time.sleep(1.0)
        assert watcher.acks[-1].watermarks["telemetry"] == 209  # up to the floor; 210 itself is not stored yet
        pub.send(topic, _window(210, floor=210))
        watcher.wait_for("telemetry", 211)
    finally:
        pub.close()
        watcher.stop()
        ingest.stop()


def test_the_agent_keeps_messages_until_the_cloud_acknowledges_and_falls_back_for_an_old_cloud(
    broker: Broker, tmp_path: Path, rf_bundle: TrainedBundle
) -> None:
    with make_store("sqlite", tmp_path) as store:  # the agent side does not depend on the store's engine
        _keep_then_fall_back(store, broker, tmp_path, rf_bundle)


def _keep_then_fall_back(store: Store, broker: Broker, tmp_path: Path, rf_bundle: TrainedBundle) -> None:
    record = record_of(rf_bundle.bundle)
    new_cloud = Ingest(store, broker.url, client_id="ack-new", ack_interval_s=0.2)
    new_cloud.start()
    agent = AgentServer(state_dir=tmp_path / "a", bundle=rf_bundle.bundle, public_key=rf_bundle.public_key,
                        device_id="gw-new", mqtt_url=broker.url, telemetry_interval_s=0.2)  # fmt: skip
    try:
        for _ in range(5):
            assert agent.predict({"records": [record]}).status_code == 200
        assert agent.agent.outbox is not None
        wait_until(lambda: agent.agent.outbox.last_seq("telemetry") >= 3, 10, "3 windows")
        wait_until(lambda: agent.agent.outbox.size() == 0, 10, "every window acknowledged by the cloud")
        status = agent.client.get("/v1/model").json()["cloud_ack"]
        assert status["mode"] == "ack" and status["unacknowledged"] == 0 and status["covered"] >= 3, status
        metrics = agent.client.get("/metrics").text
        assert "edgeloop_outbox_unacknowledged_messages 0.0" in metrics
        assert "edgeloop_outbox_unacknowledged_oldest_seconds 0.0" in metrics
    finally:
        agent.stop()
        new_cloud.stop()

    # A cloud from before acknowledgements: windows are kept for ack_fallback_s, then deleted on PUBACK.
    old_cloud = Ingest(store, broker.url, client_id="ack-old", ack_interval_s=None)
    old_cloud.start()
    said: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: said.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("edgeloop.agent.ack").addHandler(handler)
    agent = AgentServer(state_dir=tmp_path / "b", bundle=rf_bundle.bundle, public_key=rf_bundle.public_key,
                        device_id="gw-old", mqtt_url=broker.url, telemetry_interval_s=0.2,
                        ack_fallback_s=2.0)  # fmt: skip
    try:
        assert agent.agent.outbox is not None
        wait_until(lambda: agent.agent.outbox.unacknowledged()[0] >= 2, 10, "windows kept while waiting")
        assert agent.client.get("/v1/model").json()["cloud_ack"]["mode"] == "waiting"
        wait_until(lambda: agent.client.get("/v1/model").json()["cloud_ack"]["mode"] == "legacy", 10, "fallback")
        wait_until(lambda: agent.agent.outbox.size() == 0, 10, "deleted on PUBACK after the fallback")
        time.sleep(1.0)
        assert agent.agent.outbox.size() <= 1  # later windows go as before
        assert len([m for m in said if m.startswith("no acknowledgement")]) == 1
        assert old_cloud.acks is None and not any(topic.endswith("/ack") for topic in _retained_topics(broker))
    finally:
        logging.getLogger("edgeloop.agent.ack").removeHandler(handler)
        agent.stop()
        old_cloud.stop()


def _retained_topics(broker: Broker) -> list[str]:
    """Topics holding a retained message for gw-old (the old cloud must publish none)."""
    seen: list[str] = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"retained-{time.monotonic_ns()}")
    client.on_message = lambda _c, _u, m: seen.append(m.topic) if m.retain else None
    client.connect(broker.host, broker.port)
    client.subscribe("edgeloop/v1/devices/gw-old/#", qos=1)
    client.loop_start()
    time.sleep(0.5)
    client.disconnect()
    client.loop_stop()
    return seen
