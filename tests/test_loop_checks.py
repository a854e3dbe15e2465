"""The loop's checks that exist are exercised (issue 18): a canary rolled back on its PSI and on its p99 latency
with real agents (real broker, real ingest, the real cloud API and rollout controller), and the retraining
triggers `{alert: accuracy-low}` and `{schedule: ...}` firing on a real store, the real alert evaluator and the
real `edgeloop retrain` job process.

Each rollback is shown against its control: the same canary with the same telemetry passes the check first (a
healthy window for the drift check, a generous p99 limit for the latency check), so the test can fail.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from cloud_sync.alerts.evaluator import AlertEvaluator
from cloud_sync.alerts.rules import Rule
from cloud_sync.loop.retrain_triggers import RetrainTriggers, load_policy_triggers
from cloud_sync.rollouts.checks import Limits
from cloud_sync.store import audit
from cloud_sync.store.db import windows
from contracts.drift_stats import DriftRule
from tests.agent_helpers import AgentServer
from tests.cloud_support import wait_until
from tests.conftest import Broker, TrainedBundle
from tests.loop_helpers import CloudServer, start_ingest
from tests.test_agent_telemetry import records

OPS = {"Authorization": "Bearer act"}
VIEW = {"Authorization": "Bearer look"}


def _fleet(broker: Broker, tmp_path: Path, rf_bundle: TrainedBundle, group: str) -> tuple[AgentServer, AgentServer]:
    return tuple(  # type: ignore[return-value]
        AgentServer(
            state_dir=tmp_path / name,
            bundle=rf_bundle.bundle,
            public_key=rf_bundle.public_key,
            token="t",
            device_id=f"{name}-{group}",
            group=group,
            mqtt_url=broker.url,
            telemetry_interval_s=3600,
        )
        for name in ("gw-1", "gw-2")
    )


def _windows_of(cloud: CloudServer, device: str) -> int:
    with cloud.store.engine.connect() as conn:
        query = sa.select(sa.func.count()).select_from(windows).where(windows.c.device_id == device)
        return int(conn.execute(query).scalar() or 0)


def _send_window(cloud: CloudServer, agent: AgentServer, batch: list[dict[str, Any]]) -> None:
    """Predict `batch` on the agent, publish its telemetry window now and wait until the cloud stored it."""
    before = _windows_of(cloud, agent.settings.device_id)
    assert agent.predict({"records": batch}).status_code == 200
    assert agent.agent.telemetry is not None
    agent.agent.telemetry.flush()
    wait_until(lambda: _windows_of(cloud, agent.settings.device_id) > before, 15, "window stored")


def _start_canary(cloud: CloudServer, group: str, canary: AgentServer) -> str:
    devices = lambda: httpx.get(f"{cloud.url}/v1/devices", params={"group": group}, headers=VIEW).json()  # noqa: E731
    wait_until(lambda: sorted(d["model_version"] for d in devices()) == [1, 1], 15, "both devices on v1")
    body = {"model_name": "machine-failure", "model_version": 2, "group": group,
            "canary": canary.settings.device_id, "soak_minutes": 10}  # fmt: skip
    started = httpx.post(f"{cloud.url}/v1/rollouts", json=body, headers=OPS)
    assert started.status_code == 201, started.text
    wait_until(lambda: canary.version() == 2, 15, "canary on v2")
    return str(started.json()["id"])


def _state(cloud: CloudServer, rollout_id: str) -> dict[str, Any]:
    return dict(httpx.get(f"{cloud.url}/v1/rollouts/{rollout_id}", headers=VIEW).json())


def test_a_canary_rolls_back_on_drift_measured_by_real_agents(
    broker: Broker, tmp_path: Path, rf_bundle: TrainedBundle, logreg_bundle_v2: TrainedBundle
) -> None:
    limits = Limits(min_samples=50, drift=DriftRule(alpha=0.01))
    cloud = CloudServer(broker, tmp_path, rf_bundle, [rf_bundle.bundle, logreg_bundle_v2.bundle], limits=limits)
    ingest = start_ingest(cloud.store, broker)
    canary, other = _fleet(broker, tmp_path, rf_bundle, "psi")
    try:
        rollout = _start_canary(cloud, "psi", canary)
        _send_window(cloud, canary, records(200, seed=21))  # healthy readings: the check passes
        cloud.rollouts.tick()
        assert _state(cloud, rollout)["state"] in ("canary", "soaking")
        _send_window(cloud, canary, records(400, seed=22, drift=True))  # the heat wave and a new firmware
        cloud.rollouts.tick()
        state = _state(cloud, rollout)
        assert state["state"] == "rolled_back", state
        assert state["reason"].startswith("canary drift: PSI of ") and "p=" in state["reason"], state["reason"]
        wait_until(lambda: canary.version() == 1, 15, "canary back on v1")
        assert other.version() == 1
    finally:
        for agent in (canary, other):
            agent.stop()
        ingest.stop()
        cloud.stop()


def test_a_canary_rolls_back_on_p99_latency_measured_by_real_agents(
    broker: Broker, tmp_path: Path, rf_bundle: TrainedBundle, logreg_bundle_v2: TrainedBundle
) -> None:
    limits = Limits(min_samples=20, max_p99_s=10.0)
    cloud = CloudServer(broker, tmp_path, rf_bundle, [rf_bundle.bundle, logreg_bundle_v2.bundle], limits=limits)
    ingest = start_ingest(cloud.store, broker)
    canary, other = _fleet(broker, tmp_path, rf_bundle, "p99")
    try:
        rollout = _start_canary(cloud, "p99", canary)
        for seed in range(30):  # 30 requests: the p99 is the canary's real latency, a histogram bucket's bound
            assert canary.predict({"records": records(4, seed=100 + seed)}).status_code == 200
        _send_window(cloud, canary, records(4, seed=99))
        cloud.rollouts.tick()  # 10 s allowed: the real latency passes
        assert _state(cloud, rollout)["state"] in ("canary", "soaking")
        cloud.rollouts.limits = replace(limits, max_p99_s=0.0)  # no latency passes a limit of 0 s
        cloud.rollouts.tick()
        state = _state(cloud, rollout)
        assert state["state"] == "rolled_back", state
        assert state["reason"].startswith("canary p99 latency ") and "(31 requests)" in state["reason"], state
        wait_until(lambda: canary.version() == 1, 15, "canary back on v1")
    finally:
        for agent in (canary, other):
            agent.stop()
        ingest.stop()
        cloud.stop()


def _policy(tmp_path: Path, trigger: str) -> Path:
    """A policy whose job fails fast (its original data is missing): the trigger, not the training, is tested."""
    path = tmp_path / "retrain.yaml"
    path.write_text(
        f"model: machine-failure\ntriggers: [{trigger}]\n"
        f"data: {{original: {tmp_path / 'missing.csv'}, target: failure_24h}}\nresult: {{deploy: wait}}\n"
    )
    return path


def _finished(cloud: CloudServer, triggers: RetrainTriggers) -> list[dict[str, Any]]:
    assert triggers.wait(60), "the retrain job did not end"
    return [e for e in audit.entries(cloud.store) if e["action"].startswith("retrain")]


def test_the_accuracy_low_alert_starts_a_retrain(broker: Broker, tmp_path: Path, rf_bundle: TrainedBundle) -> None:
    cloud = CloudServer(broker, tmp_path, rf_bundle, [rf_bundle.bundle])
    ingest = start_ingest(cloud.store, broker)
    agent = AgentServer(
        state_dir=tmp_path / "agent", bundle=rf_bundle.bundle, public_key=rf_bundle.public_key, token="t",
        device_id="gw-acc", group="acc", mqtt_url=broker.url, telemetry_interval_s=3600,
    )  # fmt: skip
    rule = Rule(name="accuracy-low", kind="accuracy_below", threshold=0.75, window=3600, min_samples=50)
    evaluator = AlertEvaluator(cloud.store, cloud.registry, [rule])
    triggers = RetrainTriggers(cloud.store, load_policy_triggers([_policy(tmp_path, "{alert: accuracy-low}")]),
                               cloud.url, "act", tmp_path / "jobs", cooldown_s=0)  # fmt: skip
    try:
        answer = agent.predict({"records": records(80, seed=31)})
        wrong = [
            {"prediction_id": p["prediction_id"], "label": 1 - int(p["label"])} for p in answer.json()["predictions"]
        ]
        assert agent.client.post("/v1/feedback", json={"feedback": wrong}).status_code == 200  # every answer wrong
        assert agent.agent.telemetry is not None
        agent.agent.telemetry.flush()
        wait_until(lambda: _windows_of(cloud, "gw-acc") >= 1, 15, "window stored")
        triggers.tick()
        assert triggers.running() == []  # nothing fired yet
        fired = evaluator.evaluate()
        assert [(a["rule"], a["subject"]) for a in fired] == [("accuracy-low", "gw-acc")] and fired[0]["value"] == 0.0
        triggers.tick()
        assert triggers.running() == ["machine-failure"]
        triggered, failed = _finished(cloud, triggers)
        assert triggered["action"] == "retrain triggered" and triggered["details"]["trigger"] == "alert:accuracy-low"
        assert triggered["details"]["alert_id"] == fired[0]["id"] and "accuracy 0.000 on gw-acc" in triggered["reason"]
        assert failed["action"] == "retrain failed" and "missing.csv" in failed["reason"], failed
    finally:
        agent.stop()
        ingest.stop()
        cloud.stop()


def test_the_schedule_starts_a_retrain_when_it_is_due(broker: Broker, tmp_path: Path, rf_bundle: TrainedBundle) -> None:
    cloud = CloudServer(broker, tmp_path, rf_bundle, [rf_bundle.bundle])
    try:
        started = time.time()
        triggers = RetrainTriggers(cloud.store, load_policy_triggers([_policy(tmp_path, "{schedule: 30s}")]),
                                   cloud.url, "act", tmp_path / "jobs", cooldown_s=0)  # fmt: skip
        triggers.tick(now=started + 29)
        assert triggers.running() == [] and audit.entries(cloud.store, action="retrain triggered") == []
        triggers.tick(now=started + 31)  # due
        triggered, failed = _finished(cloud, triggers)
        assert triggered["action"] == "retrain triggered" and triggered["details"]["trigger"] == "schedule"
        assert triggered["reason"] == "every 30s" and failed["action"] == "retrain failed"
        triggers.tick(now=started + 40)  # the next one is due 30 s after this one
        assert audit.entries(cloud.store, action="retrain triggered") == [triggered]
        triggers.tick(now=started + 62)
        assert len(audit.entries(cloud.store, action="retrain triggered")) == 2
        assert triggers.wait(60)
    finally:
        cloud.stop()


@pytest.fixture(autouse=True)
def _token_free(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGELOOP_CLOUD_TOKEN", raising=False)
