"""deploy/mosquitto/ exercised: certificates from make-certs.sh, devices from add-device.sh, the shipped ACL.
A device cannot publish under another device's topics nor read another group's desired state; the real
agent works under it (TLS, password, its own topics)."""

from __future__ import annotations

import logging
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.agent_helpers import AgentServer, record_of
from tests.conftest import Broker, TrainedBundle
from tests.secure_broker import Client, start_secure_broker


@pytest.fixture()
def acl_broker(tmp_path: Path) -> Iterator[tuple[Broker, Path]]:
    secure = start_secure_broker(
        tmp_path, [("gw-1", "plant-a", "pw1"), ("gw-2", "plant-b", "pw2"), ("cloud", "--cloud", "pwc")]
    )
    yield secure.broker, secure.ca
    secure.stop()


def test_a_device_is_confined_to_its_own_topics_and_its_group(
    acl_broker: tuple[Broker, Path], tmp_path: Path, rf_bundle: TrainedBundle
) -> None:
    broker, ca = acl_broker
    cloud = Client(broker, ca, "cloud", "pwc", ["edgeloop/#"])
    cloud.publish("edgeloop/v1/groups/plant-a/desired", b"for-a", retain=True)
    cloud.publish("edgeloop/v1/groups/plant-b/desired", b"for-b", retain=True)
    cloud.publish("edgeloop/v1/devices/gw-2/desired", b"for-gw-2", retain=True)
    cloud.publish("edgeloop/v1/keys", b"key-set", retain=True)
    gw1 = Client(
        broker, ca, "gw-1", "pw1", ["edgeloop/v1/groups/+/desired", "edgeloop/v1/devices/+/desired", "edgeloop/v1/keys"]
    )
    agent = None
    try:
        time.sleep(1.0)
        # Reads: its group's desired state and the fleet's key set only.
        assert gw1.topics() == {"edgeloop/v1/groups/plant-a/desired", "edgeloop/v1/keys"}, gw1.messages
        # Writes: under another device's topics, or its own desired state, nothing gets through.
        before = len(cloud.messages)
        for topic in ("edgeloop/v1/devices/gw-2/telemetry", "edgeloop/v1/devices/gw-2/events",
                      "edgeloop/v1/devices/gw-2/reported", "edgeloop/v1/devices/gw-1/desired",
                      "edgeloop/v1/groups/plant-a/desired", "edgeloop/v1/alerts/x/y", "edgeloop/v1/keys"):  # fmt: skip
            gw1.publish(topic, b"forged")
        gw1.publish("edgeloop/v1/devices/gw-1/telemetry", b"mine")
        deadline = time.monotonic() + 5
        while not any(t == "edgeloop/v1/devices/gw-1/telemetry" for t, _ in cloud.messages[before:]):
            assert time.monotonic() < deadline, "the device's own telemetry did not arrive"
            time.sleep(0.05)
        time.sleep(0.5)
        assert [m for m in cloud.messages[before:] if m[1] == b"forged"] == []
        # A wrong password is refused.
        with pytest.raises(AssertionError):
            Client(broker, ca, "gw-1", "wrong", [])
        # The real agent works under this config: TLS, its password, its topics.
        agent = AgentServer(
            state_dir=tmp_path / "state", bundle=rf_bundle.bundle, public_key=rf_bundle.public_key,
            mqtt_url=f"mqtts://127.0.0.1:{broker.port}", mqtt_ca_file=ca, mqtt_username="gw-1",
            mqtt_password="pw1", device_id="gw-1", group="plant-a", telemetry_interval_s=0.3,
        )  # fmt: skip
        assert agent.agent.sync is not None and agent.agent.sync.connected.wait(10)
        deadline = time.monotonic() + 10
        wanted = {f"edgeloop/v1/devices/gw-1/{kind}" for kind in ("status", "reported", "telemetry")}
        while not wanted <= cloud.topics():
            assert time.monotonic() < deadline, f"missing {wanted - cloud.topics()}"
            time.sleep(0.05)
    finally:
        if agent is not None:
            agent.stop()
        gw1.stop()
        cloud.stop()


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_a_publish_the_acl_refuses_is_kept_counted_and_logged_once(
    acl_broker: tuple[Broker, Path], tmp_path: Path, rf_bundle: TrainedBundle
) -> None:
    """MQTT 5: Mosquitto answers a denied QoS 1 publish with PUBACK 0x87; the agent keeps the message."""
    broker, ca = acl_broker
    cloud = Client(broker, ca, "cloud", "pwc", ["edgeloop/v1/devices/gw-1/#"])
    records = _Records()
    logging.getLogger("edgeloop.agent.publisher").addHandler(records)
    # gw-2's credentials on a device configured as gw-1: the shipped ACL grants user gw-2 no gw-1 topic.
    agent = AgentServer(
        state_dir=tmp_path / "state", bundle=rf_bundle.bundle, public_key=rf_bundle.public_key,
        mqtt_url=f"mqtts://127.0.0.1:{broker.port}", mqtt_ca_file=ca, mqtt_username="gw-2", mqtt_password="pw2",
        device_id="gw-1", group="plant-a", telemetry_interval_s=0.2, outbox_refused_retry_s=1.0,
    )  # fmt: skip
    try:
        outbox, publisher = agent.agent.outbox, agent.agent.sync and agent.agent.sync.publisher
        assert outbox is not None and publisher is not None
        assert agent.predict({"records": [record_of(rf_bundle.bundle)]}).status_code == 200
        deadline = time.monotonic() + 15
        while outbox.refused_held() < 3:
            assert time.monotonic() < deadline, f"refused: {outbox.refused_held()} of {outbox.size()}"
            time.sleep(0.05)
        time.sleep(2.5)  # a few windows more, and every held message offered again after 1 s
        held, total, size = outbox.refused_held(), outbox.refused_total, outbox.size()
        assert held >= 3 and size >= held  # kept, not deleted
        assert total > held  # offered again after the hold and refused again: counted each time ...
        assert total <= held * 5  # ... but no hot loop (about one retry per message per second here)
        metrics = agent.client.get("/metrics").text
        counted = re.search(r'edgeloop_outbox_refused_total\{code="0x87",stream="telemetry"\} (\d+)', metrics)
        assert counted and int(float(counted.group(1))) >= 3, metrics
        assert re.search(r"edgeloop_outbox_refused_messages \d", metrics)
        status = agent.client.get("/v1/model").json()
        assert status["outbox_refused"] >= 3 and status["outbox_refused_total"] >= status["outbox_refused"]
        refusals = [r for r in records.records if r.getMessage().startswith("publish refused")]
        topics = [getattr(r, "fields", {})["topic"] for r in refusals]
        assert sorted(set(topics)) == topics and "edgeloop/v1/devices/gw-1/telemetry" in topics  # once per topic
        assert getattr(refusals[0], "fields", {})["code"] == "0x87"
        assert not [t for t, _ in cloud.messages if t.endswith("/telemetry")]
        # The operator grants the topics and reloads the broker: the held windows go through.
        windows = outbox.last_seq("telemetry")
        with (broker.config.parent / "acl").open("a") as acl:
            acl.write("\nuser gw-2\ntopic write edgeloop/v1/devices/gw-1/#\n")
        os.kill(broker.process.pid, signal.SIGHUP)
        deadline = time.monotonic() + 15
        while outbox.refused_held():
            assert time.monotonic() < deadline, f"still refused: {outbox.refused_held()}"
            time.sleep(0.05)
        seqs = {orjson.loads(p)["seq"] for t, p in cloud.messages if t.endswith("/telemetry")}
        assert set(range(1, windows + 1)) <= seqs
    finally:
        logging.getLogger("edgeloop.agent.publisher").removeHandler(records)
        agent.stop()
        cloud.stop()
