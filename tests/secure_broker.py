"""deploy/mosquitto/ as shipped, started for a test: certificates from make-certs.sh, users and ACL entries from
add-device.sh, mosquitto.conf with only its listener, file paths and persistence directory adapted."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from tests.agent_helpers import free_port
from tests.conftest import Broker, _spawn_mosquitto, _wait_port

__all__ = ["DEPLOY", "Client", "SecureBroker", "start_secure_broker"]

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "mosquitto"


@dataclass
class SecureBroker:
    broker: Broker
    work: Path
    ca: Path

    @property
    def url(self) -> str:
        return f"mqtts://127.0.0.1:{self.broker.port}"

    def add(self, user: str, group: str, password: str) -> None:
        """add-device.sh USER GROUP (or --cloud), then reload the broker (SIGHUP) as the script says."""
        env = {"PASSWORD": password, "PATH": "/usr/bin:/bin:/usr/sbin"}
        subprocess.run(["./add-device.sh", user, group], cwd=self.work, check=True, capture_output=True, env=env)
        if self.broker.process.poll() is None:
            os.kill(self.broker.process.pid, signal.SIGHUP)

    def stop(self) -> None:
        self.broker.stop()


def start_secure_broker(tmp_path: Path, users: list[tuple[str, str, str]], persistence: bool = False) -> SecureBroker:
    """Copy deploy/mosquitto to tmp_path/broker, make certificates for 127.0.0.1, add `users` (user, group or
    --cloud, password) and start Mosquitto on a free port with the shipped configuration."""
    work = tmp_path / "broker"
    shutil.copytree(DEPLOY, work)
    subprocess.run(["./make-certs.sh", "127.0.0.1", "localhost"], cwd=work, check=True, capture_output=True)
    for user, group, password in users:
        env = {"PASSWORD": password, "PATH": "/usr/bin:/bin:/usr/sbin"}
        subprocess.run(["./add-device.sh", user, group], cwd=work, check=True, capture_output=True, env=env)
    port = free_port()
    config = (work / "mosquitto.conf").read_text()
    config = config.replace("listener 8883", f"listener {port} 127.0.0.1")
    if persistence:
        (work / "data").mkdir()
        config = config.replace("persistence_location /var/lib/mosquitto/", f"persistence_location {work}/data/")
    else:
        config = config.replace("persistence true", "persistence false")
        config = config.replace("persistence_location /var/lib/mosquitto/", "")
    for name in ("passwd", "acl", "certs/"):
        config = config.replace(f" {name}", f" {work}/{name}")
    (work / "test.conf").write_text(config + "user root\n")
    broker = Broker("127.0.0.1", port, _spawn_mosquitto(work / "test.conf"), work / "test.conf")
    _wait_port("127.0.0.1", port)
    return SecureBroker(broker, work, work / "certs" / "ca.pem")


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
