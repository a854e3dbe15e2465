"""Updates over a real Mosquitto: desired state -> verify -> download -> golden samples -> switch -> report.

Every refusal keeps the old model serving and is reported (event + retained reported state).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from contracts.manifest import canonical_bytes
from contracts.messages import DesiredState
from contracts.signing import generate_keypair, load_private_key, sign_bytes
from tests.agent_helpers import (
    AgentServer,
    BundleServer,
    MqttProbe,
    desired_state,
    free_port,
    manifest_of,
    record_of,
    resign,
)
from tests.conftest import Broker, TrainedBundle

DEVICE = "press-07"
GROUP = "line-a"


@pytest.fixture()
def probe(broker: Broker) -> Iterator[MqttProbe]:
    client = MqttProbe(broker.host, broker.port)
    yield client
    client.stop()


@pytest.fixture()
def files(tmp_path: Path) -> Iterator[BundleServer]:
    server = BundleServer(tmp_path / "served")
    yield server
    server.stop()


def _agent(tmp_path: Path, broker: Broker, bundle: TrainedBundle, **extra: Any) -> AgentServer:
    return AgentServer(
        state_dir=tmp_path / "state",
        bundle=bundle.bundle,
        public_key=bundle.public_key,
        mqtt_url=broker.url,
        device_id=DEVICE,
        group=GROUP,
        **extra,
    )


def _event(probe: MqttProbe, kind: str, version: int | None = None, since: int = 0) -> dict[str, Any]:
    def wanted(event: dict[str, Any]) -> bool:
        return event["kind"] == kind and (version is None or event["model_version"] == version)

    return probe.wait_for(DEVICE, "events", wanted, since=since)


def _assert_refused(probe: MqttProbe, agent: AgentServer, desired: DesiredState, words: str) -> dict[str, Any]:
    """Publish `desired`; expect a new `rejected` event whose reason contains `words`, and v1 still serving."""
    events, reports = len(probe.payloads(DEVICE, "events")), len(probe.payloads(DEVICE, "reported"))
    probe.desire_group(GROUP, desired)
    event = _event(probe, "rejected", since=events)
    assert words in event["reason"], event
    reported = probe.wait_for(DEVICE, "reported", lambda r: r["last_error"] is not None, since=reports)
    assert reported["model_version"] == 1 and reported["state"] == "serving"
    assert words in reported["last_error"]
    assert agent.version() == 1
    response = agent.predict(record_of(Path(agent.settings.bundle or "")))
    assert response.status_code == 200 and response.json()["model_version"] == 1
    return event


@pytest.mark.device
def test_update_switches_with_no_failed_request(
    tmp_path: Path,
    broker: Broker,
    probe: MqttProbe,
    files: BundleServer,
    rf_bundle: TrainedBundle,
    logreg_bundle_v2: TrainedBundle,
) -> None:
    agent = _agent(tmp_path, broker, rf_bundle)
    try:
        probe.wait_for(DEVICE, "status", lambda s: s["online"] is True)
        record = record_of(rf_bundle.bundle)
        seen: list[tuple[int, int | None]] = []
        stop = threading.Event()

        def hammer() -> None:
            with httpx.Client(base_url=agent.url, headers=agent.client.headers) as client:
                while not stop.is_set():
                    response = client.post("/v1/predict", json=record)
                    version = response.json().get("model_version") if response.status_code == 200 else None
                    seen.append((response.status_code, version))

        threads = [threading.Thread(target=hammer) for _ in range(2)]
        for thread in threads:
            thread.start()
        while len(seen) < 50:  # the switch happens under load
            threading.Event().wait(0.01)
        url = files.add(logreg_bundle_v2.bundle, "v2.onnx")
        probe.desire_group(GROUP, desired_state(logreg_bundle_v2.bundle, url))
        agent.wait_version(2)
        deployed = _event(probe, "deployed", 2)
        while sum(1 for _, version in seen if version == 2) < 50:
            threading.Event().wait(0.01)
        stop.set()
        for thread in threads:
            thread.join(10)
        assert [entry for entry in seen if entry[0] != 200] == []
        versions = [version for _, version in seen]
        assert versions[0] == 1 and versions[-1] == 2
        assert deployed["details"]["previous"] == "machine-failure/1"
        reported = probe.wait_for(DEVICE, "reported", lambda r: r["model_version"] == 2)
        assert reported["state"] == "serving" and reported["last_error"] is None
        assert reported["bundle_sha256"] == manifest_of(logreg_bundle_v2.bundle).onnx.sha256
        assert (tmp_path / "state" / "current").read_text().startswith("machine-failure-v2-")
    finally:
        agent.stop()


@pytest.mark.device
def test_tampered_onnx_is_refused_and_reported(
    tmp_path: Path,
    broker: Broker,
    probe: MqttProbe,
    files: BundleServer,
    rf_bundle: TrainedBundle,
    logreg_bundle_v2: TrainedBundle,
) -> None:
    agent = _agent(tmp_path, broker, rf_bundle)
    try:
        data = bytearray((logreg_bundle_v2.bundle / "model.onnx").read_bytes())
        data[len(data) // 2] ^= 0xFF  # same size, one byte flipped
        url = files.add(logreg_bundle_v2.bundle, "tampered.onnx", bytes(data))
        _assert_refused(probe, agent, desired_state(logreg_bundle_v2.bundle, url), "sha256")
        longer = files.add(logreg_bundle_v2.bundle, "longer.onnx", bytes(data) + b"\0" * 10)
        _assert_refused(probe, agent, desired_state(logreg_bundle_v2.bundle, longer), "bytes")
        assert not any(p.name.startswith("machine-failure-v2") for p in (tmp_path / "state" / "bundles").iterdir())
    finally:
        agent.stop()


@pytest.mark.device
def test_bad_signature_is_refused_before_downloading(
    tmp_path: Path,
    broker: Broker,
    probe: MqttProbe,
    files: BundleServer,
    rf_bundle: TrainedBundle,
    logreg_bundle_v2: TrainedBundle,
) -> None:
    agent = _agent(tmp_path, broker, rf_bundle)
    try:
        unreachable = f"http://127.0.0.1:{free_port()}/never-fetched.onnx"
        manifest = manifest_of(logreg_bundle_v2.bundle)
        # An edited manifest with the original signature (e.g. someone raised the version).
        edited = manifest.model_copy(update={"version": 3})
        desired = desired_state(logreg_bundle_v2.bundle, unreachable, manifest=edited)
        _assert_refused(probe, agent, desired, "signature is invalid")
        # A correct manifest signed by another key.
        other_private, _ = generate_keypair(tmp_path / "other-keys")
        forged = sign_bytes(canonical_bytes(manifest), load_private_key(other_private)).decode()
        desired = desired_state(logreg_bundle_v2.bundle, unreachable, signature=forged)
        event = _assert_refused(probe, agent, desired, "another key")
        assert "cannot download" not in event["reason"]
    finally:
        agent.stop()


@pytest.mark.device
def test_older_version_replay_is_refused_and_signed_rollback_accepted(
    tmp_path: Path,
    broker: Broker,
    probe: MqttProbe,
    files: BundleServer,
    rf_bundle: TrainedBundle,
    logreg_bundle_v2: TrainedBundle,
) -> None:
    agent = _agent(tmp_path, broker, logreg_bundle_v2)  # v2 serving, v1 never installed on this device
    try:
        assert agent.version() == 2
        url = files.add(rf_bundle.bundle, "v1.onnx")
        probe.desire_group(GROUP, desired_state(rf_bundle.bundle, url))
        event = _event(probe, "rejected", 1)
        assert "older than the current machine-failure/2" in event["reason"]
        assert agent.version() == 2
        rollback, signature = resign(manifest_of(rf_bundle.bundle), rf_bundle.keys_dir, rollback=True)
        probe.desire_group(GROUP, desired_state(rf_bundle.bundle, url, rollback, signature))
        rolled = _event(probe, "rolled_back", 1)
        assert rolled["details"]["previous"] == "machine-failure/2"
        agent.wait_version(1)
        assert agent.predict(record_of(rf_bundle.bundle)).json()["model_version"] == 1
        seqs = [event["seq"] for event in probe.payloads(DEVICE, "events")]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    finally:
        agent.stop()


@pytest.mark.device
def test_unreachable_and_missing_bundle_urls_are_refused(
    tmp_path: Path,
    broker: Broker,
    probe: MqttProbe,
    files: BundleServer,
    rf_bundle: TrainedBundle,
    logreg_bundle_v2: TrainedBundle,
) -> None:
    agent = _agent(tmp_path, broker, rf_bundle)
    try:
        dead = f"http://127.0.0.1:{free_port()}/model.onnx"
        event = _assert_refused(probe, agent, desired_state(logreg_bundle_v2.bundle, dead), "cannot download")
        assert event["details"]["permanent"] is False
        missing = files.url("no-such-file.onnx")
        _assert_refused(probe, agent, desired_state(logreg_bundle_v2.bundle, missing), "HTTP 404")
    finally:
        agent.stop()


@pytest.mark.device
def test_golden_sample_failure_keeps_the_old_model(
    tmp_path: Path,
    broker: Broker,
    probe: MqttProbe,
    files: BundleServer,
    rf_bundle: TrainedBundle,
    logreg_bundle_v2: TrainedBundle,
) -> None:
    agent = _agent(tmp_path, broker, rf_bundle)
    try:
        manifest = manifest_of(logreg_bundle_v2.bundle)
        wrong = [
            sample.model_copy(update={"probabilities": [p * 0.5 for p in sample.probabilities]})
            for sample in manifest.golden_samples
        ]
        edited, signature = resign(manifest, rf_bundle.keys_dir, golden_samples=[s.model_dump() for s in wrong])
        url = files.add(logreg_bundle_v2.bundle, "v2.onnx")
        _assert_refused(probe, agent, desired_state(logreg_bundle_v2.bundle, url, edited, signature), "golden")
        assert sorted(p.name[:19] for p in (tmp_path / "state" / "bundles").iterdir()) == ["machine-failure-v1-"]
    finally:
        agent.stop()


@pytest.mark.device
def test_device_desired_state_wins_over_the_group(
    tmp_path: Path,
    broker: Broker,
    probe: MqttProbe,
    files: BundleServer,
    rf_bundle: TrainedBundle,
    logreg_bundle_v2: TrainedBundle,
) -> None:
    url1 = files.add(rf_bundle.bundle, "v1.onnx")
    url2 = files.add(logreg_bundle_v2.bundle, "v2.onnx")
    rollback, signature = resign(manifest_of(rf_bundle.bundle), rf_bundle.keys_dir, rollback=True)
    probe.desire_group(GROUP, desired_state(rf_bundle.bundle, url1, rollback, signature))  # retained, before start
    probe.desire_device(DEVICE, desired_state(logreg_bundle_v2.bundle, url2))
    agent = _agent(tmp_path, broker, rf_bundle)
    try:
        agent.wait_version(2)
        _event(probe, "deployed", 2)
        probe.desire_device(DEVICE, None)  # cleared: the group's (signed rollback to v1) applies again
        _event(probe, "rolled_back", 1)
        agent.wait_version(1)
    finally:
        agent.stop()


def test_reconnects_after_a_broker_restart_and_reports_the_fresh_state(
    tmp_path: Path,
    broker: Broker,
    rf_bundle: TrainedBundle,
    logreg_bundle_v2: TrainedBundle,
) -> None:
    agent = _agent(tmp_path, broker, rf_bundle)
    try:
        sync = agent.agent.sync
        assert sync is not None and sync.connected.wait(10)
        broker.stop()
        deadline = time.monotonic() + 10
        while sync.connected.is_set() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not sync.connected.is_set()
        assert agent.predict(record_of(rf_bundle.bundle)).status_code == 200  # serving with the broker down
        agent.agent.updater.install_local(logreg_bundle_v2.bundle)  # a change while offline
        assert agent.version() == 2
        broker.start()
        assert sync.connected.wait(15)
        probe = MqttProbe(broker.host, broker.port)
        try:
            # The broker restored v1's retained state from its persistence file; the agent's fresh one replaces
            # it (a subscriber may see the stale one first, then v2), and a later subscriber gets only v2.
            probe.wait_for(DEVICE, "reported", lambda r: r["model_version"] == 2)
            late = MqttProbe(broker.host, broker.port)
            try:
                retained = late.wait_for(DEVICE, "reported", lambda r: True)
                assert retained["model_version"] == 2, "a stale reported state was retained"
            finally:
                late.stop()
            rollback, signature = resign(manifest_of(rf_bundle.bundle), rf_bundle.keys_dir, rollback=True)
            unused = f"http://127.0.0.1:{free_port()}/v1.onnx"  # v1 is in the store: no download
            probe.desire_group(GROUP, desired_state(rf_bundle.bundle, unused, rollback, signature))
            agent.wait_version(1)
            assert probe.wait_for(DEVICE, "reported", lambda r: r["model_version"] == 1)["state"] == "serving"
        finally:
            probe.stop()
    finally:
        agent.stop()
