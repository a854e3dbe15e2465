"""Retraining on a trigger inside `edgeloop cloud` (the real CloudService: API, ingest, alerts, rollouts and
retrain triggers): a real agent serves drifted traffic, its window goes over MQTT into the ingest, the
feature-drift alert fires, the policy's job runs as a separate `edgeloop retrain` process (small data, a
logistic regression), registers v2, converts it and rolls it out to the group's canary; the agent ends up
serving v2 and every step is in the audit log."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn

from cloud_sync.loop.retrain_triggers import load_policy_triggers
from cloud_sync.service import CloudService
from cloud_sync.settings import CloudSettings
from contracts.errors import InputError
from tests.agent_helpers import AgentServer, free_port
from tests.cli_helpers import run_edgeloop
from tests.cloud_support import wait_until
from tests.conftest import Broker, TrainedBundle
from tests.test_agent_telemetry import records

VIEW = {"Authorization": "Bearer look"}


def test_drift_alert_triggers_retrain_convert_and_canary(
    broker: Broker,
    tmp_path: Path,
    rf_bundle: TrainedBundle,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from trainer.sample_data import write_machines

    home = tmp_path / "home"
    shutil.copytree(rf_bundle.keys_dir, home / "keys")  # the key the fleet trusts signs the challenger
    monkeypatch.setenv("EDGELOOP_HOME", str(home))
    data = write_machines(tmp_path / "small.csv", rows=600, seed=5)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = run_edgeloop(
        ["train", "--data", str(data), "--target", "failure_24h", "--name", "machine-failure", "--model", "logreg",
         "--ignore", "reading_id", "--tracking-uri", uri], monkeypatch, capsys, home,
    )  # fmt: skip
    assert first.exit_code == 0, first.stderr  # v1 in this registry; the fleet runs the random forest v1
    policy = tmp_path / "retrain.yaml"
    policy.write_text(
        "model: machine-failure\ntriggers: [manual, {alert: feature-drift}]\n"
        f"data: {{original: {data}, target: failure_24h, ignore: [reading_id]}}\ntrain: {{model: logreg}}\n"
        "result: {deploy: canary, group: line-1, canary: 100%, soak_minutes: 60}\n"
    )
    port = free_port()
    settings = CloudSettings(
        port=port, mqtt_url=broker.url, store_url=f"sqlite:///{tmp_path / 'cloud.db'}",
        bundles_dir=tmp_path / "cloud-bundles", keys_dir=home / "keys", viewer_tokens=["viewer:look"],
        operator_tokens=["ops:act"], alert_tick_s=0.3, rollout_tick_s=0.3, retrain_tick_s=0.3,
        retrain_policies=[policy], retrain_tracking_uri=uri, retrain_workdir=tmp_path / "retrain",
        ingest_client_id=f"trigger-ingest-{time.monotonic_ns()}",
    )  # fmt: skip
    service = CloudService(settings)
    service.registry.add(rf_bundle.bundle)  # what the fleet runs: drift is scored against its manifest
    server = uvicorn.Server(uvicorn.Config(service.create_app(), host="127.0.0.1", port=port, log_config=None))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, 15, "cloud started")
    cloud = f"http://127.0.0.1:{port}"
    agent = AgentServer(
        state_dir=tmp_path / "agent", bundle=rf_bundle.bundle, public_key=rf_bundle.public_key, token="t",
        device_id="gw-1", group="line-1", mqtt_url=broker.url, telemetry_interval_s=3600,
    )  # fmt: skip
    try:
        devices = lambda: httpx.get(f"{cloud}/v1/devices", headers=VIEW).json()  # noqa: E731
        wait_until(lambda: [d["model_version"] for d in devices()] == [1], 15, "gw-1 reported v1")
        drifted = records(300, seed=51, drift=True)
        assert agent.predict({"records": drifted}).status_code == 200
        assert agent.agent.telemetry is not None
        agent.agent.telemetry.flush()
        audit = lambda action: httpx.get(f"{cloud}/v1/audit", headers=VIEW, params={"action": action}).json()  # noqa: E731
        wait_until(lambda: audit("retrain triggered"), 20, "the drift alert triggered a retrain")
        assert service.retrains is not None and service.retrains.wait(150), "the retrain job did not end"
        finished = audit("retrain finished")
        assert finished, audit("retrain failed")
        agent.wait_version(2, timeout=30)  # the challenger reached the canary (here: the whole 1-device group)

        (triggered,) = audit("retrain triggered")  # one job although several features drifted
        assert triggered["actor"] == "controller" and triggered["details"]["trigger"] == "alert:feature-drift"
        assert "feature-drift fired on gw-1/" in triggered["reason"]
        alerts = httpx.get(f"{cloud}/v1/alerts", headers=VIEW, params={"state": "firing"}).json()
        assert triggered["details"]["alert_id"] in {a["id"] for a in alerts if a["rule"] == "feature-drift"}
        (recorded,) = audit("retrain")
        assert recorded["actor"] == "ops" and recorded["target"] == "machine-failure/2"
        assert recorded["details"]["trigger"] == "alert:feature-drift" and recorded["details"]["deploy"] == "canary"
        (deployed,) = audit("deploy")
        assert deployed["target"] == "machine-failure/2 -> group line-1" and deployed["actor"] == "ops"
        rollout = httpx.get(f"{cloud}/v1/rollouts/latest", headers=VIEW, params={"group": "line-1"}).json()
        assert rollout["model_version"] == 2 and rollout["previous_version"] == 1 and rollout["canary"] == ["gw-1"]
        ids = [entry["id"] for entry in (triggered, recorded, deployed, finished[0])]
        assert ids == sorted(ids)  # in this order in the append-only log
        # The cooldown holds: another firing does not start a second job.
        assert not service.retrains.fire(service.retrains.policies[0], "alert:feature-drift", "again", {}, time.time())
    finally:
        agent.stop()
        server.should_exit = True
        thread.join(15)


def test_policy_triggers_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("model: m\ntriggers: [manual, {alert: accuracy-low}, {schedule: 7d}]\ndata: {original: x}\n")
    (policy,) = load_policy_triggers([path])
    assert policy.alerts == {"accuracy-low"} and policy.schedule_s == 7 * 86400
    path.write_text("model: m\ntriggers: [{cron: daily}]\n")
    with pytest.raises(InputError, match="is not manual"):
        load_policy_triggers([path])
    path.write_text("triggers: [manual]\n")
    with pytest.raises(InputError, match="`model`"):
        load_policy_triggers([path])
