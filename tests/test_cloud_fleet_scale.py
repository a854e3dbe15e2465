"""Fleet-scale mechanics against a real Mosquitto: many simulated devices on one `SimFleet` thread, a promotion
clearing only the device-level desired topics that hold a payload (recorded in `desired_overrides`), batch
publishes waiting for every PUBACK, and the record seeded from past canaries on a store older than it."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import sqlalchemy as sa
from paho.mqtt.enums import CallbackAPIVersion

from cloud_sync.fleet.sim_fleet import SimFleet
from cloud_sync.fleet.simulator import SimDevice
from cloud_sync.fleet.stats import device_list
from cloud_sync.ingest.publisher import MqttPublisher
from cloud_sync.ingest.subscriber import Ingest
from cloud_sync.rollouts import overrides
from cloud_sync.rollouts.controller import Rollouts
from cloud_sync.rollouts.model import RolloutRequest
from cloud_sync.store.audit import entries
from cloud_sync.store.bundles import BundleRegistry
from cloud_sync.store.db import Store, desired_overrides, rollouts
from contracts.errors import ServiceUnavailableError
from contracts.signing import load_public_key
from contracts.topics import device_topic
from tests.cloud_support import make_store, wait_until
from tests.conftest import Broker, TrainedBundle

NAME = "machine-failure"


def test_a_sim_fleet_thread_runs_many_devices_through_a_canary_rollout(
    broker: Broker, tmp_path: Path, rf_bundle: TrainedBundle, logreg_bundle_v2: TrainedBundle
) -> None:
    count = 400  # beyond what one process can run with paho's own threads and select()
    with make_store("sqlite", tmp_path) as store:
        registry = BundleRegistry(tmp_path / "bundles", load_public_key(rf_bundle.public_key))
        registry.add(rf_bundle.bundle)
        registry.add(logreg_bundle_v2.bundle)
        ingest = Ingest(store, broker.url, client_id="scale-ingest")
        ingest.start()
        publisher = MqttPublisher(broker.url).start()
        cloud = Rollouts(
            store,
            registry,
            publisher,
            base_url="http://127.0.0.1:1",
            keys_dir=rf_bundle.keys_dir,
            confirm_timeout_s=30.0,
        )
        fleet = SimFleet()
        for i in range(count):
            fleet.add(SimDevice(f"dev-{i:04d}", "line-1", broker.host, broker.port, model=(NAME, 1)))
        fleet.start()
        try:
            wait_until(lambda: len(device_list(store, "line-1")) == count, 30, "devices known to the cloud")
            rollout = cloud.deploy(RolloutRequest(NAME, 2, "line-1", canary="1%", soak_s=0))
            canary = rollout["canary"]
            assert len(canary) == 4
            assert overrides.recorded(store, "line-1") == canary  # only the canary holds an override
            for device in fleet.devices[:4]:
                assert device.wait_for(2)
            deadline = time.monotonic() + 30
            while cloud.status(rollout["id"])["state"] != "promoted" and time.monotonic() < deadline:
                ingest.wait_idle(2)
                cloud.tick()
                time.sleep(0.1)
            status = cloud.status(rollout["id"])
            assert status["state"] == "promoted", status["reason"]
            assert all(device.wait_for(2, 20) for device in fleet.devices)
            wait_until(lambda: all("device" not in d._desired for d in fleet.devices[:4]), what="overrides cleared")
            assert overrides.recorded(store, "line-1") == []
            wait_until(lambda: cloud.status(rollout["id"])["on_target"] == count, 30, "the cloud sees all")
            summary = cloud.status(rollout["id"], per_device=False)  # one aggregate query, no device list
            assert (summary["group_devices"], summary["on_target"], "devices" in summary) == (count, count, False)
            accepted = [e for e in entries(store) if e["action"] == "device accepted"]
            assert len(accepted) == count  # every deployed event audited once (one executemany per batch)
            assert all(d.history == [(NAME, 2)] for d in fleet.devices)
        finally:
            fleet.stop()
            publisher.stop()
            ingest.stop()


def _retained(broker: Broker, pattern: str, quiet_s: float = 1.0, timeout_s: float = 60.0) -> int:
    """How many retained messages a fresh subscriber to `pattern` receives: counted until none has come for
    `quiet_s` (a fixed wait undercounted 3,000 retained messages on a loaded machine: 1,344 in 1 s)."""
    received: list[bytes] = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"count-{time.monotonic_ns()}")
    client.on_message = lambda _c, _u, message: received.append(message.payload)
    client.connect(broker.host, broker.port)
    client.subscribe(pattern, qos=1)
    client.loop_start()
    deadline, seen, last_change = time.monotonic() + timeout_s, -1, time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - last_change < quiet_s:
        if len(received) != seen:
            seen, last_change = len(received), time.monotonic()
        time.sleep(0.05)
    client.loop_stop()
    client.disconnect()
    return len(received)


def test_publish_many_waits_for_every_ack_and_fails_clearly(broker: Broker) -> None:
    publisher = MqttPublisher(broker.url, client_id="scale-many").start()
    topics = [device_topic(f"dev-{i}", "desired") for i in range(3000)]
    try:
        publisher.publish_many([(topic, b'{"desired": true}') for topic in topics])
        # Returned = acknowledged: the broker already holds every one as a retained message.
        assert _retained(broker, device_topic("+", "desired")) == 3000
        publisher.publish_many([(topic, b"") for topic in topics])  # clearing, as a promotion does
        assert _retained(broker, device_topic("+", "desired")) == 0
        # A broker that takes the publishes but never acknowledges (stopped with SIGSTOP): a clear error.
        broker.process.send_signal(signal.SIGSTOP)
        try:
            with pytest.raises(ServiceUnavailableError, match=r"did not acknowledge 3 of 3 publishes in 1s"):
                publisher.publish_many([(topic, b"x") for topic in topics[:3]], timeout=1.0)
        finally:
            broker.process.send_signal(signal.SIGCONT)
    finally:
        publisher.stop()
    down = MqttPublisher("mqtt://127.0.0.1:1", client_id="scale-down").start(wait_s=0)
    try:
        with pytest.raises(ServiceUnavailableError, match="unreachable; nothing was published"):
            down.publish_many([(topics[0], b"")], timeout=0.5)
    finally:
        down.stop()


def test_an_older_store_records_past_canaries_as_overrides(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cloud.db'}"
    store = Store(url).create()
    with store.begin() as conn:
        conn.execute(
            rollouts.insert().values(
                id="r-1", group_name="line-1", model_name=NAME, model_version=2, canary=["dev-1", "dev-2"],
                soak_s=0.0, state="rolled_back", actor="alice", created_at=1.0,
            )
        )  # fmt: skip
        conn.exec_driver_sql("DROP TABLE desired_overrides")  # as before this table existed (and before Alembic)
        conn.exec_driver_sql("DROP TABLE alembic_version")
    store.dispose()
    store = Store(url).create()
    try:
        assert overrides.recorded(store, "line-1") == ["dev-1", "dev-2"]
        with store.engine.begin() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(desired_overrides)).scalar() == 2
            conn.execute(desired_overrides.delete())  # as a promotion clearing them would
        store.dispose()
        store = Store(url).create()
        assert overrides.recorded(store, "line-1") == []  # seeded once, when the table was created
    finally:
        store.dispose()
