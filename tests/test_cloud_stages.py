"""Staged rollouts (`--stages`, rate limit, abort rule) against a real broker, with simulated devices
(`SimDevice`, the agent's wire behaviour) and the controller ticked by the test."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cloud_sync.fleet.simulator import SimDevice, make_window
from cloud_sync.fleet.stats import device_list
from cloud_sync.rollouts.model import Pacing, RolloutRequest
from cloud_sync.rollouts.stages import parse_stages, plan
from cloud_sync.store.audit import entries
from contracts.errors import InputError
from contracts.manifest import Manifest, canonical_bytes
from contracts.signing import load_public_key, verify_bytes
from tests.cloud_support import wait_until
from tests.conftest import Broker, TrainedBundle
from tests.fault_helpers import AgentProcess, CloudProcess, wait_http
from tests.rollout_helpers import Cloud, running_cloud

NAME = "machine-failure"
STAGES = (10.0, 20.0, 50.0, 100.0)
EDGELOOP = str(Path(sys.executable).with_name("edgeloop"))


@pytest.fixture()
def cloud(broker: Broker, tmp_path: Path, rf_bundle: TrainedBundle, logreg_bundle_v2: TrainedBundle) -> Iterator[Cloud]:
    with running_cloud(broker, tmp_path, rf_bundle, logreg_bundle_v2) as running:
        yield running


def _on_v1(cloud: Cloud, count: int, rejecting: tuple[str, ...] = ()) -> list[SimDevice]:
    """`count` devices d-00.. on v1 (the group's version); those in `rejecting` refuse v2 (a failed health check)."""

    def refuse(manifest: dict) -> str | None:
        return "golden sample 2: label 1 != 0" if manifest["version"] == 2 else None

    devices = [
        SimDevice(f"d-{i:02d}", "line-1", cloud.broker.host, cloud.broker.port, reject=refuse).start()
        if f"d-{i:02d}" in rejecting
        else SimDevice(f"d-{i:02d}", "line-1", cloud.broker.host, cloud.broker.port).start()
        for i in range(count)
    ]
    wait_until(lambda: len(device_list(cloud.store, "line-1")) == count, what="devices known to the cloud")
    cloud.rollouts.deploy(RolloutRequest(NAME, 1, "line-1", canary="0", soak_s=0))
    for device in devices:
        assert device.wait_for(1)
    wait_until(lambda: cloud.rollouts.latest("line-1")["on_target"] == count, what="group on v1")
    return devices


def _on_v2(devices: list[SimDevice]) -> list[str]:
    return [d.device_id for d in devices if d.model == (NAME, 2)]


def test_the_plan_and_the_spec() -> None:
    names = [f"d-{i:02d}" for i in range(10)]
    assert parse_stages("1%,10%, 50%,100") == (1.0, 10.0, 50.0, 100.0)
    assert plan(STAGES, names) == (("d-00",), ("d-01",), ("d-02", "d-03", "d-04"), tuple(names[5:]))
    assert plan((1.0, 10.0), names) == (("d-00",), ())  # 1 % and 10 % of ten devices are the same device
    with pytest.raises(InputError, match="must increase"):
        RolloutRequest(NAME, 2, "line-1", stages=(10.0, 5.0))
    with pytest.raises(InputError, match="stages are for a serving rollout"):
        RolloutRequest(NAME, 2, "line-1", stages=(10.0,), mode="shadow")
    with pytest.raises(InputError, match="need --stages"):
        RolloutRequest(NAME, 2, "line-1", pacing=Pacing(max_per_minute=10))
    with pytest.raises(InputError, match="--stages 1%,x"):
        parse_stages("1%,x")


def test_four_stages_widen_one_after_another_to_promotion(cloud: Cloud) -> None:
    _four_stages(cloud)


def test_four_stages_on_postgresql(
    broker: Broker, tmp_path: Path, rf_bundle: TrainedBundle, logreg_bundle_v2: TrainedBundle
) -> None:
    """The same on PostgreSQL: its JSON columns and the compare-and-set updates of a stage."""
    with running_cloud(broker, tmp_path, rf_bundle, logreg_bundle_v2, engine="postgresql") as cloud:
        _four_stages(cloud)


def _four_stages(cloud: Cloud) -> None:
    devices = _on_v1(cloud, 10)
    started = cloud.rollouts.deploy(RolloutRequest(NAME, 2, "line-1", soak_s=0.5, stages=STAGES), actor="alice")
    assert started["stage"]["stage"] == 1 and started["stage"]["devices"] == ["d-00"]
    assert started["canary"] == ["d-00"]  # the first stage is switched by deploy itself
    rid = started["id"]
    seen: list[tuple[int, list[str]]] = []
    deadline = time.monotonic() + 30
    while (status := cloud.rollouts.status(rid))["state"] in ("canary", "soaking") and time.monotonic() < deadline:
        if status["state"] == "soaking" and (status["stage"]["stage"], _on_v2(devices)) not in seen:
            seen.append((status["stage"]["stage"], _on_v2(devices)))
        cloud.ingest.wait_idle(2)
        cloud.rollouts.tick()
        time.sleep(0.05)
    assert status["state"] == "promoted", status["reason"]
    # Each stage soaked with exactly its devices on v2 (the 100 % stage is the group's promotion).
    assert seen == [(1, ["d-00"]), (2, ["d-00", "d-01"]), (3, ["d-00", "d-01", "d-02", "d-03", "d-04"])]
    assert status["reason"] == "stage 3/4 (50%) soaked 0.5s on 5 devices"
    assert status["stage"] | {"checks": None} == status["stage"] | {"checks": None, "stage": 4, "percent": 100.0}
    for device in devices:
        assert device.wait_for(2)
    widened = [e["reason"] for e in entries(cloud.store, action="widen")]
    assert widened == [
        "stage 1/4 (10%) soaked 0.5s on 1 devices; stage 2/4 (20%) adds 1 devices",
        "stage 2/4 (20%) soaked 0.5s on 2 devices; stage 3/4 (50%) adds 3 devices",
    ]
    deploy = next(e for e in entries(cloud.store, action="deploy") if e["details"].get("stages"))
    assert deploy["reason"] == "stages 10% (+1), 20% (+1), 50% (+3), 100% (+5), soak 0.5s each"


def test_a_failed_check_at_stage_two_rolls_every_switched_device_back(cloud: Cloud, rf_bundle: TrainedBundle) -> None:
    devices = _on_v1(cloud, 10)
    rid = cloud.rollouts.deploy(RolloutRequest(NAME, 2, "line-1", soak_s=0.3, stages=STAGES))["id"]
    deadline = time.monotonic() + 20
    while (stage_two := cloud.rollouts.status(rid))["stage"]["stage"] < 2 and time.monotonic() < deadline:
        cloud.ingest.wait_idle(2)
        cloud.rollouts.tick()
        time.sleep(0.05)
    cloud.rollouts.tick()  # switches stage 2's device
    stage_two = cloud.rollouts.status(rid)
    assert stage_two["stage"]["stage"] == 2 and stage_two["canary"] == ["d-00", "d-01"]
    assert devices[1].wait_for(2)
    # The stage-2 device fails 15 % of its requests on v2: above the 5 % limit of the canary checks.
    window = make_window("d-01", "line-1", 1, time.time(), cloud.v2, requests=200, errors=30)
    devices[1].publish_window(window)
    done = cloud.run_until(rid, ("rolled_back", "promoted"))
    assert done["state"] == "rolled_back"
    assert done["reason"].startswith("stage 2/4 (20%): canary error rate 0.150 is above 0.05"), done["reason"]
    assert done["stage"]["checks"] == done["reason"]
    for device in devices[:2]:  # both switched devices went back, with a signed rollback manifest
        assert device.wait_for(1)
        assert device.history == [(NAME, 1), (NAME, 2), (NAME, 1)]
        desired = device._desired["device"]
        assert desired.manifest["rollback"] is True
        manifest = Manifest.model_validate(desired.manifest)
        verify_bytes(canonical_bytes(manifest), desired.signature.encode(), load_public_key(rf_bundle.public_key))
    assert all(device.history == [(NAME, 1)] for device in devices[2:])  # never reached
    rollback = entries(cloud.store, action="rollback")[0]
    assert rollback["actor"] == "controller" and rollback["details"]["canary"] == ["d-00", "d-01"]


def test_the_rate_limit_spaces_the_switches_in_the_audit_log(cloud: Cloud) -> None:
    devices = _on_v1(cloud, 6)
    request = RolloutRequest(NAME, 2, "line-1", soak_s=0, stages=(100.0,), pacing=Pacing(max_per_minute=120))
    rid = cloud.rollouts.deploy(request)["id"]
    done = cloud.run_until(rid, ("promoted", "rolled_back"))
    assert done["state"] == "promoted", done["reason"]
    assert sorted(_on_v2(devices)) == [d.device_id for d in devices]
    switches = sorted(entries(cloud.store, action="switch"), key=lambda e: e["at"])
    times = [_epoch(e["at"]) for e in switches]
    switched = [name for e in switches for name in e["details"]["devices"]]
    assert sorted(switched) == [d.device_id for d in devices]
    # 120 a minute: the k-th device no sooner than 0.5 s * k after the first (each audit row is one batch).
    before = 0
    for entry, at in zip(switches, times, strict=True):
        assert at - times[0] >= 0.5 * before - 0.01, (before, at - times[0])
        before += len(entry["details"]["devices"])
    assert times[-1] - times[0] >= 2.5 - 0.01


@pytest.mark.parametrize(("limit", "outcome"), [(10.0, "rolled_back"), (25.0, "promoted")])
def test_the_abort_rule_fires_on_a_fifth_of_the_devices_rejecting(cloud: Cloud, limit: float, outcome: str) -> None:
    devices = _on_v1(cloud, 10, rejecting=("d-03", "d-07"))
    pacing = Pacing(abort_failed_pct=limit, abort_min_devices=5)
    rid = cloud.rollouts.deploy(RolloutRequest(NAME, 2, "line-1", soak_s=0, stages=(100.0,), pacing=pacing))["id"]
    done = cloud.run_until(rid, ("promoted", "rolled_back"))
    assert done["state"] == outcome, done["reason"]
    if outcome == "rolled_back":
        assert done["reason"] == (
            "stage 1/1 (100%): abort rule: 2 of 10 switched devices (20%) rejected the version or did not confirm it "
            "within 10s, above 10% (counted from 5 devices): d-03, d-07"
        )
        for device in devices:
            assert device.wait_for(1)
    else:  # 20 % is within a 25 % limit: the rest is promoted, the two keep v1
        assert sorted(_on_v2(devices)) == [d.device_id for d in devices if d.device_id not in ("d-03", "d-07")]


def _epoch(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def test_a_stage_of_real_agents_through_the_cli(
    tmp_path: Path, broker: Broker, rf_bundle: TrainedBundle, logreg_bundle_v2: TrainedBundle
) -> None:
    """The real `edgeloop cloud`, two real `edgeloop agent`s (a-1, a-2: first by id, so stage 1 of 25 % of eight
    devices) and six simulated devices (s-1..s-6), driven by `edgeloop deploy --stages` like an operator: the
    agents download, verify and serve v2 and soak while the simulated devices stay on v1, then the group follows."""
    group = "line-stages"
    cloud = CloudProcess(tmp_path / "cloud", broker.url, rf_bundle.keys_dir, rollout_tick_s=0.2).start()
    agents: list[AgentProcess] = []
    sims = [SimDevice(f"s-{i}", group, broker.host, broker.port).start() for i in range(1, 7)]
    env = {**os.environ, "EDGELOOP_HOME": str(tmp_path / "op"), "EDGELOOP_CLOUD_URL": cloud.url, "COLUMNS": "200"}

    def edgeloop(*args: str, ok: bool = True) -> str:
        done = subprocess.run([EDGELOOP, *args], env=env, capture_output=True, text=True, timeout=60)
        assert (done.returncode == 0) == ok, f"edgeloop {' '.join(args)}: {done.stdout}\n{done.stderr}"
        return done.stdout + done.stderr

    def latest() -> dict:
        return httpx.get(f"{cloud.url}/v1/rollouts/latest?group={group}", timeout=10).json()

    try:
        for device in ("a-1", "a-2"):
            agent = AgentProcess(tmp_path / device, device, group, rf_bundle.bundle, rf_bundle.public_key, broker.url)
            bundle_flag = agent.args.index("--bundle")  # no model at start: everything comes from the cloud
            agent.args = [EDGELOOP, "agent", *agent.args[3:bundle_flag], *agent.args[bundle_flag + 2 :]]
            agents.append(agent.start(wait=False))
            wait_http(f"{agent.url}/healthz", process=agent.process)
        wait_until(lambda: len(httpx.get(f"{cloud.url}/v1/devices?group={group}").json()) == 8, what="8 devices")
        assert "state promoted" in edgeloop("deploy", str(rf_bundle.bundle), "--group", group, "--canary", "0")
        wait_until(lambda: latest()["on_target"] == 8, timeout=30, what="the group on v1")

        v2 = str(logreg_bundle_v2.bundle)
        refused = edgeloop("deploy", v2, "--group", group, "--max-per-minute", "5", ok=False)
        assert "--max-per-minute and the abort rule need --stages" in refused and "Traceback" not in refused
        refused = edgeloop("deploy", v2, "--group", group, "--stages", "50%,10%", ok=False)
        assert "--stages must increase, e.g. 1%,10%,50%,100%" in refused and "Traceback" not in refused
        out = edgeloop("deploy", v2, "--group", group, "--stages", "25%,100%", "--soak", "0.1")
        assert "stage 1/2 (25%): +2 devices, 2 of 8 switched" in out, out
        wait_until(lambda: latest()["state"] == "soaking", timeout=30, what="stage 1 soaking")
        assert [_served(agent) for agent in agents] == [2, 2]  # the real agents downloaded, verified, serve v2
        assert [sim.model for sim in sims] == [(NAME, 1)] * 6  # not reached yet
        assert "stage 1/2 (25%)" in edgeloop("rollout", "status", "--group", group)
        wait_until(lambda: latest()["state"] == "promoted", timeout=30, what="promotion after the soak")
        for sim in sims:
            assert sim.wait_for(2)
        assert latest()["reason"] == "stage 1/2 (25%) soaked 6s on 2 devices"
    finally:
        for agent in agents:
            agent.stop()
        for sim in sims:
            sim.stop()
        cloud.stop()


def _served(agent: AgentProcess) -> int | None:
    response = httpx.get(f"{agent.url}/readyz", timeout=5)
    return int(response.json()["model_version"]) if response.status_code == 200 else None
