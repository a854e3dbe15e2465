"""Fault injection on one agent (`make test-faults`): a full disk, SIGKILL during a download, during a model
switch and with a full outbox, and a bundle server that is slow, truncates or sends garbage.

The agent runs as a real process where it is killed; the broker, the bundle server and the disk are real.
"""

from __future__ import annotations

import errno
import os
import random
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.outbox import Outbox
from tests.agent_helpers import AgentServer, MqttProbe, desired_state, manifest_of, record_of
from tests.conftest import Broker, TrainedBundle
from tests.fault_helpers import AgentProcess, ControlledBundleServer, Traffic

pytestmark = pytest.mark.faults

DEVICE = "gw-f"
GROUP = "plant-f"


@pytest.fixture()
def probe(broker: Broker) -> Iterator[MqttProbe]:
    client = MqttProbe(broker.host, broker.port)
    yield client
    client.stop()


@pytest.fixture()
def bundle_server() -> Iterator[ControlledBundleServer]:
    server = ControlledBundleServer()
    yield server
    server.stop()


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MB tmpfs (a real file system that really fills up). Needs root or CAP_SYS_ADMIN."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.decode().strip()}): needs root or CAP_SYS_ADMIN")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(directory: Path) -> Path:
    """Write a file until the file system says ENOSPC; returns it (delete it to free the space)."""
    filler = directory / "filler.bin"
    block = b"\0" * (1 << 16)
    with open(filler, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(block)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    # the last partial block: fill what is left byte-wise in small pieces
    with open(filler, "ab", buffering=0) as handle:
        for size in (4096, 512, 1):
            try:
                while True:
                    handle.write(b"\0" * size)
            except OSError:
                continue
    return filler


def test_disk_full_keeps_serving_reports_and_refuses_updates(
    small_disk: Path,
    broker: Broker,
    probe: MqttProbe,
    bundle_server: ControlledBundleServer,
    rf_bundle: TrainedBundle,
    logreg_bundle_v2: TrainedBundle,
) -> None:
    agent = AgentServer(
        state_dir=small_disk / "state",
        bundle=rf_bundle.bundle,
        public_key=rf_bundle.public_key,
        mqtt_url=broker.url,
        device_id=DEVICE,
        group=GROUP,
        telemetry_interval_s=0.3,
        token="t0ken",
    )
    record = record_of(rf_bundle.bundle)
    try:
        assert agent.agent.sync is not None and agent.agent.sync.connected.wait(10)
        probe.wait_for(DEVICE, "telemetry", lambda w: True)
        filler = _fill(small_disk)
        for _ in range(50):
            response = agent.predict(record)
            assert response.status_code == 200 and response.json()["model_version"] == 1
        time.sleep(1.0)  # several telemetry windows fail to reach the outbox meanwhile
        assert agent.client.get("/readyz").status_code == 200
        # An update cannot be stored: refused with the reason, reported over MQTT, old model still serving.
        v2 = (logreg_bundle_v2.bundle / "model.onnx").read_bytes()
        bundle_server.serve(v2)
        reports = len(probe.payloads(DEVICE, "reported"))
        probe.desire_group(GROUP, desired_state(logreg_bundle_v2.bundle, bundle_server.url))
        reported = probe.wait_for(DEVICE, "reported", lambda r: r["last_error"] is not None, since=reports, timeout=30)
        assert "no space left on device" in reported["last_error"].lower(), reported
        assert reported["model_version"] == 1 and reported["state"] == "serving"
        assert agent.version() == 1 and agent.predict(record).json()["model_version"] == 1
        status = agent.client.get("/v1/model").json()
        assert "no space left on device" in (status["last_error"] or "").lower(), status
        assert not any(p.name.startswith("machine-failure-v2") for p in (small_disk / "state" / "bundles").iterdir())
        # Space comes back: the same desired state, delivered again, now deploys, and telemetry flows again.
        filler.unlink()
        probe.desire_group(GROUP, desired_state(logreg_bundle_v2.bundle, bundle_server.url))
        agent.wait_version(2, timeout=30)
        assert agent.predict(record).json()["model_version"] == 2
        last = probe.payloads(DEVICE, "telemetry")[-1]["seq"] if probe.payloads(DEVICE, "telemetry") else 0
        probe.wait_for(DEVICE, "telemetry", lambda w: w["seq"] > last and w["model_version"] == 2, timeout=15)
        kinds = [e["kind"] for e in probe.payloads(DEVICE, "events")]
        assert "deployed" in kinds
    finally:
        agent.stop()


def _agent_process(tmp_path: Path, broker: Broker, bundle: TrainedBundle, **env: Any) -> AgentProcess:
    env.setdefault("download_timeout_s", 5)
    env.setdefault("download_retries", 1)
    env.setdefault("download_backoff_s", 0.1)
    return AgentProcess(tmp_path / "agent", DEVICE, GROUP, bundle.bundle, bundle.public_key, broker.url, **env)


def test_sigkill_during_a_download_then_restart_serves_the_old_model_and_finishes(
    tmp_path: Path,
    broker: Broker,
    probe: MqttProbe,
    bundle_server: ControlledBundleServer,
    rf_bundle: TrainedBundle,
    logreg_bundle_v2: TrainedBundle,
) -> None:
    record = record_of(rf_bundle.bundle)
    v2 = (logreg_bundle_v2.bundle / "model.onnx").read_bytes()
    chunk = max(1, len(v2) // 100)
    bundle_server.serve(v2, chunk=chunk, delay=0.05)  # 100 chunks, 20 a second: the download takes 5 s
    agent = _agent_process(tmp_path, broker, rf_bundle, download_timeout_s=10).start()
    try:
        probe.wait_for(DEVICE, "status", lambda s: s["online"] is True)
        probe.desire_group(GROUP, desired_state(logreg_bundle_v2.bundle, bundle_server.url))
        deadline = time.monotonic() + 20
        while bundle_server.sent < len(v2) // 4:
            assert time.monotonic() < deadline, "the download never started"
            time.sleep(0.02)
        assert list((agent.state_dir / "tmp").iterdir()), "no partial download on disk"
        agent.kill()  # mid-download
        bundle_server.gate.clear()  # the next download hangs until the test lets it go
        agent.start()
        assert agent.served_version(record) == 1  # the last good model, from disk, no network needed
        assert not any(p.name.startswith("machine-failure-v2") for p in (agent.state_dir / "bundles").iterdir())
        bundle_server.serve(v2)
        bundle_server.gate.set()
        agent.wait_version(record, 2)
        probe.wait_for(DEVICE, "events", lambda e: e["kind"] == "deployed" and e["model_version"] == 2)
        assert agent.model()["last_error"] is None
    finally:
        agent.stop()


def test_sigkill_during_model_switches_always_restarts_on_a_verified_model(
    tmp_path: Path,
    broker: Broker,
    probe: MqttProbe,
    bundle_server: ControlledBundleServer,
    rf_bundle: TrainedBundle,
    logreg_bundle_v2: TrainedBundle,
) -> None:
    """Kill the agent at spread-out moments after a desired state arrives (download, verify, golden samples,
    pointer switch, event): every restart serves v1 or v2, complete and verified, and converges to v2."""
    record = record_of(rf_bundle.bundle)
    bundle_server.serve((logreg_bundle_v2.bundle / "model.onnx").read_bytes())
    rng = random.Random(7)
    seen: set[int] = set()
    for attempt, delay in enumerate([0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, rng.uniform(0, 0.4)]):
        probe.desire_group(GROUP, None)
        agent = _agent_process(tmp_path / f"run{attempt}", broker, rf_bundle)
        agent.start()
        try:
            probe.desire_group(GROUP, desired_state(logreg_bundle_v2.bundle, bundle_server.url))
            time.sleep(delay)
            agent.kill()
            agent.args = [a for a in agent.args if a != str(rf_bundle.bundle)]  # restart from the store only
            index = agent.args.index("--bundle")
            del agent.args[index]
            agent.start()
            version = agent.served_version(record)
            seen.add(version)
            assert version in (1, 2)
            current = (agent.state_dir / "current").read_text().strip()
            assert (agent.state_dir / "bundles" / current / "manifest.sig").is_file()
            assert manifest_of(agent.state_dir / "bundles" / current).version == version
            agent.wait_version(record, 2)  # the retained desired state is applied after the restart
        finally:
            agent.stop()
    assert seen, "no restart observed"


def test_sigkill_with_a_full_outbox_delivers_what_it_kept_and_counts_what_it_dropped(
    tmp_path: Path, broker: Broker, probe: MqttProbe, rf_bundle: TrainedBundle
) -> None:
    record = record_of(rf_bundle.bundle)
    broker.stop()
    # No cloud here, only the broker: its PUBACK is the end of the road, as with a cloud from before end-to-end
    # acknowledgements (otherwise the kept windows would count against the cap of 10 for ack_fallback_s).
    agent = _agent_process(tmp_path, broker, rf_bundle, outbox_max_messages=10, cloud_ack="false")
    agent.args[agent.args.index("--telemetry-interval") + 1] = "0.1"
    agent.start()
    traffic = Traffic(agent, [record], pause_s=0.01).start()
    try:
        deadline = time.monotonic() + 20
        while True:  # windows pile up past the cap while the broker is away
            outbox = Outbox(agent.state_dir / "outbox.db")
            last, dropped, size = outbox.last_seq("telemetry"), outbox.dropped, outbox.size()
            outbox.close()
            if dropped >= 20:
                break
            assert time.monotonic() < deadline, f"outbox never overflowed: last={last} size={size}"
            time.sleep(0.2)
        traffic.stop()
        agent.kill()
        assert traffic.failed == []
        outbox = Outbox(agent.state_dir / "outbox.db")
        kept = sorted(m.seq for m in outbox.pending(100) if m.stream == "telemetry")
        last, dropped = outbox.last_seq("telemetry"), outbox.dropped
        outbox.close()
        # The cap counts every message; events are never dropped, so windows make up the rest.
        assert len(kept) >= 8 and kept == list(range(last - len(kept) + 1, last + 1)) and dropped == last - len(kept)
        broker.start()
        # Slower windows after the restart, so the cap does not push the kept backlog out before it is sent.
        agent.args[agent.args.index("--telemetry-interval") + 1] = "1.0"
        agent.start()
        assert agent.served_version(record) == 1
        windows: dict[int, dict[str, Any]] = {}
        deadline = time.monotonic() + 30
        while not set(kept) <= set(windows):
            assert time.monotonic() < deadline, f"backlog not delivered: got {sorted(windows)} want {kept}"
            windows = {w["seq"]: w for w in probe.payloads(DEVICE, "telemetry")}
            time.sleep(0.1)
        after = probe.wait_for(DEVICE, "telemetry", lambda w: w["seq"] > last, timeout=15)
        assert after["dropped_windows"] == dropped  # the loss is reported, never silent
    finally:
        traffic.stop()
        agent.stop()


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("slow", "timed out"),
        ("truncated", "connection closed after"),
        ("garbage", "sha256"),
        ("short garbage", "connection closed after"),
        ("oversized", "signed manifest says"),
    ],
)
def test_bad_bundle_server_is_refused_with_a_reason_while_serving_goes_on(
    tmp_path: Path,
    broker: Broker,
    probe: MqttProbe,
    bundle_server: ControlledBundleServer,
    rf_bundle: TrainedBundle,
    logreg_bundle_v2: TrainedBundle,
    case: str,
    reason: str,
) -> None:
    v2 = (logreg_bundle_v2.bundle / "model.onnx").read_bytes()
    if case == "slow":
        bundle_server.serve(v2, chunk=256, delay=3.0)  # stalls longer than the download timeout
    elif case == "truncated":
        bundle_server.serve(v2, keep=len(v2) // 3)
    elif case == "garbage":
        bundle_server.serve(os.urandom(len(v2)))
    elif case == "short garbage":
        bundle_server.serve(b"<html>502 Bad Gateway</html>", length=len(v2))
    else:
        bundle_server.serve(v2 + os.urandom(4096))
    agent = AgentServer(
        state_dir=tmp_path / "state", bundle=rf_bundle.bundle, public_key=rf_bundle.public_key,
        mqtt_url=broker.url, device_id=DEVICE, group=GROUP, download_timeout_s=1.0, download_retries=1,
    )  # fmt: skip
    record = record_of(rf_bundle.bundle)
    try:
        assert agent.agent.sync is not None and agent.agent.sync.connected.wait(10)
        probe.desire_group(GROUP, desired_state(logreg_bundle_v2.bundle, bundle_server.url))
        started = time.monotonic()
        codes = []
        while not any(e["kind"] == "rejected" for e in probe.payloads(DEVICE, "events")):
            codes.append(agent.predict(record).status_code)  # serving during the failing update
            assert time.monotonic() - started < 30, "no rejection"
        event = next(e for e in probe.payloads(DEVICE, "events") if e["kind"] == "rejected")
        assert reason in event["reason"], event
        assert set(codes) <= {200} and agent.version() == 1
        assert agent.predict(record).json()["model_version"] == 1
        assert not any(p.name.startswith("machine-failure-v2") for p in (tmp_path / "state" / "bundles").iterdir())
        assert list((tmp_path / "state" / "tmp").iterdir()) == []  # no half-downloaded file left behind
    finally:
        agent.stop()
