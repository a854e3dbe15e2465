"""Signing key rotation on a live fleet (issue 21): three real agents on a real Mosquitto, the real cloud API
(bundle registry, rollouts, key rotation) served by uvicorn. Every device keeps answering predictions all
through; an update signed by the new key is accepted during the overlap and after retirement, one signed by
the old key during the overlap only; a forged or replayed key set is refused and logged; the trusted set
survives a restart; a device that was offline during the announcement follows the chain to the new key."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud_sync.signing_keys import KEYSET_FILE
from cloud_sync.store.bundles import bundle_tar
from contracts.keyset import KEYS_TOPIC, KeySetMessage, sign_key_set
from contracts.manifest import MANIFEST_FILE, MODEL_FILE, SIGNATURE_FILE, canonical_bytes
from contracts.signing import (
    PRIVATE_KEY_FILE,
    PUBLIC_KEY_FILE,
    key_id,
    load_private_key,
    load_public_key,
    public_key_of,
    sign_bytes,
)
from tests.agent_helpers import AgentServer, MqttProbe, desired_state, manifest_of, record_of
from tests.cli_helpers import CliResult, assert_one_line_error, run_edgeloop
from tests.cloud_support import wait_until
from tests.conftest import Broker, TrainedBundle
from tests.loop_helpers import CloudServer

GROUP = "line-1"
OPERATOR = {"Authorization": "Bearer act"}
DEVICES = ("gw-1", "gw-2", "gw-3")


def _bundle(source: Path, target: Path, version: int, signer: Path) -> Path:
    """`source`'s model as version `version`, signed by the private key at `signer`."""
    target.mkdir(parents=True)
    shutil.copyfile(source / MODEL_FILE, target / MODEL_FILE)
    manifest = manifest_of(source).model_copy(update={"version": version})
    (target / MANIFEST_FILE).write_bytes(manifest.to_json_bytes())
    (target / SIGNATURE_FILE).write_bytes(sign_bytes(canonical_bytes(manifest), load_private_key(signer)))
    return target


class Traffic:
    """Predictions against every agent, all the time: any answer but 200 is a failure of 'keeps serving'.
    `lock` is held for each round, so an agent taken out of `agents` under it gets no more requests."""

    def __init__(self, agents: dict[str, AgentServer], record: dict[str, object]) -> None:
        self.agents, self.record = dict(agents), record
        self.answered = 0
        self.failures: list[str] = []
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            with self.lock:
                for name, agent in self.agents.items():
                    try:
                        status = agent.predict(self.record).status_code
                    except Exception as exc:  # counted, never a dead thread that checks nothing any more
                        status, name = 0, f"{name}: {exc!r}"
                    if status == 200:
                        self.answered += 1
                    else:
                        self.failures.append(f"{name}: HTTP {status}")
            time.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(5)


@pytest.fixture()
def fleet(
    broker: Broker, tmp_path: Path, rf_bundle: TrainedBundle
) -> Iterator[tuple[CloudServer, dict[str, AgentServer]]]:
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir()
    for name in (PRIVATE_KEY_FILE, PUBLIC_KEY_FILE):
        shutil.copyfile(rf_bundle.keys_dir / name, keys_dir / name)
    device_key = tmp_path / "device-signing.pub"  # what devices were provisioned with: the first key
    shutil.copyfile(keys_dir / PUBLIC_KEY_FILE, device_key)
    cloud = CloudServer(broker, tmp_path, rf_bundle, [rf_bundle.bundle], keys_dir=keys_dir)
    agents: dict[str, AgentServer] = {}
    try:
        for device in DEVICES:
            agents[device] = AgentServer(
                state_dir=tmp_path / device, bundle=rf_bundle.bundle, public_key=device_key, device_id=device,
                group=GROUP, mqtt_url=broker.url,
            )  # fmt: skip
        for agent in agents.values():
            assert agent.agent.sync is not None and agent.agent.sync.connected.wait(10)
        yield cloud, agents
    finally:
        for agent in agents.values():
            agent.stop()
        cloud.stop()


def _trusted(agent: AgentServer) -> set[str]:
    return set(agent.client.get("/v1/model").json()["trusted_keys"])


def _wait_trusted(agents: list[AgentServer], keys: set[str], what: str) -> None:
    for agent in agents:
        wait_until(lambda agent=agent: _trusted(agent) == keys, what=what)  # type: ignore[misc]


def _deploy(cloud: CloudServer, bundle: Path, version: int) -> None:
    client = httpx.Client(base_url=cloud.url, headers=OPERATOR, timeout=30)
    upload = client.put("/v1/bundles", content=bundle_tar(bundle))
    assert upload.status_code == 201, upload.text
    body = {"model_name": "machine-failure", "model_version": version, "group": GROUP, "canary": "0"}
    deployed = client.post("/v1/rollouts", json=body)
    assert deployed.status_code == 201 and deployed.json()["state"] == "promoted", deployed.text


def test_a_key_rotation_on_a_live_fleet_refuses_no_update_and_no_device_stops_serving(
    fleet: tuple[CloudServer, dict[str, AgentServer]],
    broker: Broker,
    tmp_path: Path,
    rf_bundle: TrainedBundle,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cloud, agents = fleet
    edgeloop_logger = logging.getLogger("edgeloop")  # it does not propagate (contracts/logs.py): listen there

    def cli(*args: str) -> CliResult:  # the operator's commands, against this cloud
        monkeypatch.setenv("EDGELOOP_CLOUD_URL", cloud.url)
        monkeypatch.setenv("EDGELOOP_CLOUD_TOKEN", "act")
        monkeypatch.setenv("COLUMNS", "200")
        handlers, level = list(edgeloop_logger.handlers), edgeloop_logger.level
        try:
            return run_edgeloop(list(args), monkeypatch, capsys, tmp_path / "home")
        finally:  # the CLI points the logger at the captured stderr of the moment: the agents keep logging here
            edgeloop_logger.handlers[:] = handlers
            edgeloop_logger.setLevel(level)

    keys_dir = cloud.rollouts.keys_dir
    api = httpx.Client(base_url=cloud.url, headers=OPERATOR, timeout=30)
    old = key_id(load_public_key(keys_dir / PUBLIC_KEY_FILE))
    probe = MqttProbe(broker.host, broker.port)
    traffic = Traffic(agents, record_of(rf_bundle.bundle))
    edgeloop_logger.addHandler(caplog.handler)
    try:
        assert all(_trusted(agent) == {old} for agent in agents.values())
        # Rotate: the cloud publishes [old, new] signed by the old key; every device trusts both.
        assert_one_line_error(cli("keys", "retire"), 7, "HTTP 409", "no rotation under way")  # nothing to retire
        rotated = cli("keys", "rotate", "--reason", "yearly")
        assert rotated.exit_code == 0, rotated.stderr
        new = key_id(load_public_key(keys_dir / PUBLIC_KEY_FILE))
        assert (
            new != old and f"rotated: key set 1 signed by {old} published; trusted now: {old}, {new}" in rotated.stdout
        )
        announcement = (keys_dir / KEYSET_FILE).read_bytes()
        assert api.post("/v1/keys/rotate").status_code == 409  # one overlap at a time
        _wait_trusted(list(agents.values()), {old, new}, "the new key trusted")
        reported = probe.wait_for("gw-1", "reported", lambda state: set(state.get("trusted_keys", [])) == {old, new})
        assert reported["state"] == "serving"
        metrics = agents["gw-2"].client.get("/metrics").text
        assert f'edgeloop_trusted_key{{key_id="{new}"}} 1.0' in metrics
        # The overlap: an update signed by the new key, then one signed by the old key, both go everywhere.
        retired_old_key = keys_dir / "retired" / f"{old}.key"
        _deploy(cloud, _bundle(rf_bundle.bundle, tmp_path / "v2", 2, keys_dir / PRIVATE_KEY_FILE), 2)
        for agent in agents.values():
            agent.wait_version(2)
        _deploy(cloud, _bundle(rf_bundle.bundle, tmp_path / "v3", 3, retired_old_key), 3)
        for agent in agents.values():
            agent.wait_version(3)
        status = api.get("/v1/keys").json()
        assert status["overlap"] and status["bundles_by_key"] == {old: ["machine-failure/1", "machine-failure/3"],
                                                                  new: ["machine-failure/2"]}  # fmt: skip
        shown = cli("keys", "status").stdout
        assert f"current key {new}; trusted: {new}, {old} (key set 1)" in shown and "rotation under way" in shown
        # Retire: [new] signed by the new key; the old key is refused from now on, the new one still accepted.
        retired = cli("keys", "retire", "--reason", "every device reports the new key")
        assert f"retired: key set 2 signed by {new} published; trusted now: {new}" in retired.stdout, retired.stderr
        _wait_trusted(list(agents.values()), {new}, "the old key retired")
        _deploy(cloud, _bundle(rf_bundle.bundle, tmp_path / "v4", 4, keys_dir / PRIVATE_KEY_FILE), 4)
        for agent in agents.values():
            agent.wait_version(4)
        stale = _bundle(rf_bundle.bundle, tmp_path / "v5", 5, retired_old_key)
        refused_upload = api.put("/v1/bundles", content=bundle_tar(stale))
        assert refused_upload.status_code >= 400 and f"signed by key {old}" in refused_upload.json()["detail"]
        before = {device: len(probe.payloads(device, "events")) for device in DEVICES}
        probe.desire_group(GROUP, desired_state(stale, f"{cloud.url}/bundles/machine-failure/4/model.onnx"))
        for device in DEVICES:
            event = probe.wait_for(device, "events", lambda e: e["kind"] == "rejected", since=before[device])
            assert f"signed by key {old} (another key, not trusted here)" in event["reason"], event
        assert all(agent.version() == 4 for agent in agents.values())
        # A forged set (signed by a key nobody trusts) and a replay of the announcement: refused and logged.
        intruder = Ed25519PrivateKey.generate()
        forged = sign_key_set(9, [public_key_of(intruder)], intruder, "2026-01-01T00:00:00Z")
        before = {device: len(probe.payloads(device, "events")) for device in DEVICES}
        probe.publish(KEYS_TOPIC, forged.model_dump_json().encode(), retain=False)
        probe.publish(KEYS_TOPIC, announcement, retain=False)
        for device in DEVICES:
            probe.wait_for(device, "events", lambda e: "does not trust" in (e["reason"] or ""), since=before[device])
            probe.wait_for(
                device, "events", lambda e: "refused as a replay" in (e["reason"] or ""), since=before[device]
            )
        assert all(_trusted(agent) == {new} for agent in agents.values())
        refusals = [getattr(r, "fields", {}) for r in caplog.records if r.getMessage() == "key set refused"]
        assert len(refusals) >= 2 * len(DEVICES), refusals
        assert any(key_id(public_key_of(intruder)) in fields["reason"] for fields in refusals)
        # A restart (planned: out of the traffic meanwhile) keeps the trusted set (state dir) and the served model.
        with traffic.lock:
            traffic.agents.pop("gw-3")
        agents["gw-3"].stop()
        agents["gw-3"] = AgentServer(**{**agents["gw-3"].settings.model_dump(), "bundle": None})
        with traffic.lock:
            traffic.agents["gw-3"] = agents["gw-3"]
        answered = traffic.answered
        assert _trusted(agents["gw-3"]) == {new} and agents["gw-3"].version() == 4
        # A device offline all through the rotation, provisioned with the old key, follows the chain to the new
        # key before it looks at the retained desired state, so it refuses that bundle signed by the old key.
        late = AgentServer(state_dir=tmp_path / "gw-late", public_key=agents["gw-1"].settings.public_key,
                           device_id="gw-late", group=GROUP, mqtt_url=broker.url)  # fmt: skip
        try:
            wait_until(lambda: _trusted(late) == {new}, what="the late device following the chain")
            event = probe.wait_for("gw-late", "events", lambda e: e["kind"] == "rejected")
            assert f"signed by key {old} (another key, not trusted here)" in event["reason"], event
            assert late.version() is None
        finally:
            late.stop()
        wait_until(lambda: traffic.answered > answered + 2 * len(DEVICES), what="traffic after the restart")
    finally:
        edgeloop_logger.removeHandler(caplog.handler)
        traffic.stop()
        probe.stop()
    assert traffic.failures == [] and traffic.answered > 100, traffic.failures[:5]
    audit = [
        (row["actor"], row["action"], row["reason"]) for row in api.get("/v1/audit").json() if row["target"] == "keys"
    ]
    assert audit == [("ops", "keys rotate", "yearly"), ("ops", "keys retire", "every device reports the new key")]
    published = KeySetMessage.model_validate_json((keys_dir / KEYSET_FILE).read_bytes())
    assert published.seq == 2 and published.previous is not None and published.previous.signer == old


def _retained_key_set(broker: Broker, timeout: float = 5.0) -> KeySetMessage | None:
    """What a device connecting now receives on edgeloop/v1/keys (the retained key set), or None."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    got: list[bytes] = []
    arrived = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"keys-{time.monotonic_ns()}", protocol=mqtt.MQTTv5)
    client.on_connect = lambda c, *_args: c.subscribe(KEYS_TOPIC, qos=1)
    client.on_message = lambda _c, _u, message: (got.append(bytes(message.payload)), arrived.set())
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        arrived.wait(timeout)
    finally:
        client.disconnect()
        client.loop_stop()
    return KeySetMessage.model_validate_json(got[-1]) if got and got[-1] else None


def test_the_cloud_process_publishes_the_last_key_set_again_at_start(
    broker: Broker, tmp_path: Path, rf_bundle: TrainedBundle
) -> None:
    """A broker that lost its retained messages gets the key set back from the next `edgeloop cloud` start
    (keys_dir/keyset.json), and the process serves the key routes (GET /v1/keys)."""
    from cloud_sync.ingest.publisher import MqttPublisher
    from cloud_sync.signing_keys import KeyRotation
    from cloud_sync.store.bundles import BundleRegistry
    from tests.cloud_support import Publisher, make_store
    from tests.fault_helpers import CloudProcess

    keys_dir = tmp_path / "keys"
    keys_dir.mkdir()
    for name in (PRIVATE_KEY_FILE, PUBLIC_KEY_FILE):
        shutil.copyfile(rf_bundle.keys_dir / name, keys_dir / name)
    old = key_id(load_public_key(keys_dir / PUBLIC_KEY_FILE))
    publisher = MqttPublisher(broker.url, client_id="keys-test").start()
    with make_store("sqlite", tmp_path / "first") as store:
        rotated = KeyRotation(keys_dir, store, BundleRegistry(tmp_path / "bundles", keys_dir=keys_dir), publisher)
        published = rotated.rotate("ops", "yearly")
    publisher.stop()
    assert _retained_key_set(broker) == published and published.signer == old
    wiper = Publisher(broker.host, broker.port)
    wiper.send(KEYS_TOPIC, b"", retain=True)  # the broker forgets the retained set (restarted without persistence)
    wiper.close()
    assert _retained_key_set(broker, timeout=1.0) is None
    cloud = CloudProcess(tmp_path / "cloud", broker.url, keys_dir, viewer_tokens='["viewer:look"]').start()
    try:
        again = _retained_key_set(broker, timeout=15.0)
        assert again == published
        status = httpx.get(f"{cloud.url}/v1/keys", headers={"Authorization": "Bearer look"}, timeout=30).json()
        assert status["overlap"] and status["seq"] == 1 and set(status["trusted"]) == {old, status["current"]}
    finally:
        cloud.stop()
