"""deploy/mosquitto/ exercised: certificates from make-certs.sh, devices from add-device.sh, the shipped ACL.
A device cannot publish under another device's topics nor read another group's desired state; the real
agent works under it (TLS, password, its own topics)."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.agent_helpers import AgentServer, free_port
from tests.conftest import Broker, TrainedBundle, _spawn_mosquitto, _wait_port

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "mosquitto"


@pytest.fixture()
def acl_broker(tmp_path: Path) -> Iterator[tuple[Broker, Path]]:
    work = tmp_path / "broker"
    shutil.copytree(DEPLOY, work)
    subprocess.run(["./make-certs.sh", "127.0.0.1", "localhost"], cwd=work, check=True, capture_output=True)
    for user, group, password in (("gw-1", "plant-a", "pw1"), ("gw-2", "plant-b", "pw2"), ("cloud", "--cloud", "pwc")):
        env = {"PASSWORD": password, "PATH": "/usr/bin:/bin:/usr/sbin"}
        subprocess.run(["./add-device.sh", user, group], cwd=work, check=True, capture_output=True, env=env)
    port = free_port()
    config = (work / "mosquitto.conf").read_text()
    config = config.replace("listener 8883", f"listener {port} 127.0.0.1").replace("persistence true", "")
    config = config.replace("persistence_location /var/lib/mosquitto/", "")
    for name in ("passwd", "acl", "certs/"):
        config = config.replace(f" {name}", f" {work}/{name}")
    (work / "test.conf").write_text(config + "user root\n")
    broker = Broker("127.0.0.1", port, _spawn_mosquitto(work / "test.conf"), work / "test.conf")
    _wait_port("127.0.0.1", port)
    yield broker, work / "certs" / "ca.pem"
    broker.stop()


class Client:
    def __init__(self, broker: Broker, ca: Path, user: str, password: str, subscribe: list[str]) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{user}-{time.monotonic_ns()}")
        self.client.username_pw_set(user, password)
        self.client.tls_set(ca_certs=str(ca))
        self.client.on_message = lambda _c, _u, m: self.messages.append((m.topic, bytes(m.payload)))
        self.client.on_subscribe = lambda *_a: self.ready.set()

        def on_connect(c: mqtt.Client, _u: object, _f: object, reason: mqtt.ReasonCode, _p: object) -> None:
            if reason.is_failure:
                return
            if subscribe:
                c.subscribe([(t, 1) for t in subscribe])
            else:
                self.ready.set()

        self.client.on_connect = on_connect
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        if not self.ready.wait(5):
            self.stop()
            raise AssertionError(f"{user} could not connect/subscribe")

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def topics(self) -> set[str]:
        return {topic for topic, _ in self.messages}

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_a_device_is_confined_to_its_own_topics_and_its_group(
    acl_broker: tuple[Broker, Path], tmp_path: Path, rf_bundle: TrainedBundle
) -> None:
    broker, ca = acl_broker
    cloud = Client(broker, ca, "cloud", "pwc", ["edgeloop/#"])
    cloud.publish("edgeloop/v1/groups/plant-a/desired", b"for-a", retain=True)
    cloud.publish("edgeloop/v1/groups/plant-b/desired", b"for-b", retain=True)
    cloud.publish("edgeloop/v1/devices/gw-2/desired", b"for-gw-2", retain=True)
    gw1 = Client(broker, ca, "gw-1", "pw1", ["edgeloop/v1/groups/+/desired", "edgeloop/v1/devices/+/desired"])
    agent = None
    try:
        time.sleep(1.0)
        # Reads: its group's desired state only.
        assert gw1.topics() == {"edgeloop/v1/groups/plant-a/desired"}, gw1.messages
        # Writes: under another device's topics, or its own desired state, nothing gets through.
        before = len(cloud.messages)
        for topic in ("edgeloop/v1/devices/gw-2/telemetry", "edgeloop/v1/devices/gw-2/events",
                      "edgeloop/v1/devices/gw-2/reported", "edgeloop/v1/devices/gw-1/desired",
                      "edgeloop/v1/groups/plant-a/desired", "edgeloop/v1/alerts/x/y"):  # fmt: skip
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
