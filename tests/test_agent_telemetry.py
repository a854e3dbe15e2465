"""Agent telemetry end to end on a real Mosquitto: windows, drift, feedback accuracy, and nothing lost
across a broker outage or a SIGKILL of the agent."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.agent_helpers import AgentServer, MqttProbe, free_port
from tests.conftest import Broker, TrainedBundle
from tests.device_helpers import python_for_agents
from trainer.sample_data import FEATURES, make_machines


def records(rows: int, seed: int, drift: bool = False) -> list[dict[str, Any]]:
    frame = make_machines(rows, seed=seed, drift=drift)[FEATURES].astype(object)
    return frame.where(frame.notna(), None).to_dict(orient="records")


@pytest.fixture()
def probe(broker: Broker) -> Iterator[MqttProbe]:
    client = MqttProbe(broker.host, broker.port)
    yield client
    client.stop()


def _agent(tmp_path: Path, broker: Broker, bundle: TrainedBundle, interval: float = 1.0, **extra: Any) -> AgentServer:
    return AgentServer(
        state_dir=tmp_path / "state",
        bundle=bundle.bundle,
        public_key=bundle.public_key,
        device_id="gw-t",
        group="plant-t",
        mqtt_url=broker.url,
        telemetry_interval_s=interval,
        token="t0ken",
        **extra,
    )


def _windows_with_requests(probe: MqttProbe) -> list[dict[str, Any]]:
    return [w for w in probe.payloads("gw-t", "telemetry") if w["requests"]]


@pytest.mark.device
def test_windows_are_readable_and_show_drift_only_after_drifted_traffic(
    tmp_path: Path, broker: Broker, probe: MqttProbe, rf_bundle: TrainedBundle
) -> None:
    agent = _agent(tmp_path, broker, rf_bundle, interval=600)  # flushed by hand: one window per phase
    try:
        for start in range(0, 1200, 100):
            assert agent.predict({"records": records(1200, seed=11)[start : start + 100]}).status_code == 200
        assert agent.agent.telemetry is not None
        agent.agent.telemetry.flush()
        calm = probe.wait_for("gw-t", "telemetry", lambda w: w["requests"] > 0)
        assert calm["schema_version"] == "v1" and calm["model_name"] == "machine-failure"
        assert calm["records"] == 1200 and calm["requests"] == 12
        assert max(score["psi"] for score in calm["drift"].values()) < 0.1
        assert not any(score["drifted"] for score in calm["drift"].values()), calm["drift"]
        assert calm["resources"]["rss_bytes"] > 0 and calm["resources"]["disk_free_bytes"] > 0

        drifted = records(1200, seed=12, drift=True)
        for start in range(0, 1200, 100):
            assert agent.predict({"records": drifted[start : start + 100]}).status_code == 200
        agent.agent.telemetry.flush()
        window = probe.wait_for("gw-t", "telemetry", lambda w: w["seq"] > calm["seq"] and w["requests"] > 0)
        bands = {name: score["band"] for name, score in window["drift"].items()}
        assert bands["temperature_c"] == "significant" and bands["firmware"] == "significant"
        assert bands["site"] == "stable" and bands["rpm"] == "stable"
        verdicts = {name: score["drifted"] for name, score in window["drift"].items()}
        assert verdicts["temperature_c"] and verdicts["firmware"] and not verdicts["site"] and not verdicts["rpm"]
        assert window["drift"]["temperature_c"]["p_adjusted"] < 1e-6 and window["drift"]["temperature_c"]["count"] > 0
        assert window["features"]["firmware"]["counts"]["__unseen__"] > 0
        metrics = agent.client.get("/metrics").text
        assert 'edgeloop_feature_psi{feature="temperature_c"}' in metrics
        assert 'edgeloop_feature_drifted{feature="temperature_c"} 1.0' in metrics
        assert 'edgeloop_feature_drifted{feature="site"} 0.0' in metrics
    finally:
        agent.stop()


@pytest.mark.device
def test_feedback_accuracy_matches_an_independent_computation(
    tmp_path: Path, broker: Broker, probe: MqttProbe, rf_bundle: TrainedBundle
) -> None:
    frame = make_machines(300, seed=21)
    batch = records(300, seed=21)
    agent = _agent(tmp_path, broker, rf_bundle, interval=600)
    try:
        answer = agent.predict({"records": batch}).json()["predictions"]
        truth = frame["failure_24h"].tolist()
        feedback = [{"prediction_id": p["prediction_id"], "label": t} for p, t in zip(answer, truth, strict=True)]
        single = agent.client.post("/v1/feedback", json=feedback[0])
        assert single.status_code == 200 and single.json()["actual"] == truth[0]
        result = agent.client.post("/v1/feedback", json={"feedback": feedback[1:]}).json()
        assert result["accepted"] == 299 and result["rejected"] == []
        again = agent.client.post("/v1/feedback", json=feedback[0])
        assert again.status_code == 404 and "unknown" in again.json()["detail"]
        unknown = agent.client.post("/v1/feedback", json={"prediction_id": "nope", "label": 1})
        assert unknown.status_code == 404
        fresh = agent.predict(batch[0]).json()["prediction_id"]
        bad = agent.client.post("/v1/feedback", json={"prediction_id": fresh, "label": 7})
        assert bad.status_code == 422 and bad.json()["field"] == "label"  # refused, not consumed: can be retried
        assert agent.agent.telemetry is not None
        agent.agent.telemetry.flush()
        window = probe.wait_for("gw-t", "telemetry", lambda w: w["feedback_total"] > 0)
        expected = float(np.mean([p["label"] == t for p, t in zip(answer, truth, strict=True)]))
        assert window["feedback_total"] == 300
        assert window["accuracy_value"] == pytest.approx(expected)
        pairs = [(str(t), str(p["label"])) for p, t in zip(answer, truth, strict=True)]
        for actual, predicted in set(pairs):
            assert window["confusion"][actual][predicted] == pairs.count((actual, predicted))
    finally:
        agent.stop()


def test_broker_outage_loses_no_window(
    tmp_path: Path, broker: Broker, probe: MqttProbe, rf_bundle: TrainedBundle
) -> None:
    agent = _agent(tmp_path, broker, rf_bundle, interval=0.5)
    sent = records(200, seed=31)
    try:
        for index in range(40):
            if index == 10:
                broker.stop()
            if index == 30:
                broker.start()
            assert agent.predict(sent[index]).status_code == 200  # serving never depends on the broker
            time.sleep(0.1)
        assert agent.agent.telemetry is not None
        last = agent.agent.telemetry.flush()
        assert last is not None
        received = {w["seq"] for w in probe.wait_for_all("gw-t", "telemetry", last, timeout=60)}
        assert received == set(range(1, last + 1)), f"missing {sorted(set(range(1, last + 1)) - received)}"
        total = sum(w["records"] for w in {w["seq"]: w for w in probe.payloads("gw-t", "telemetry")}.values())
        assert total == 40
    finally:
        agent.stop()


@pytest.mark.device
def test_sigkill_with_a_backlog_then_restart_delivers_it(
    tmp_path: Path, broker: Broker, probe: MqttProbe, rf_bundle: TrainedBundle
) -> None:
    python, env = python_for_agents()  # the device venv's python under `make check-edge`
    env |= {"EDGELOOP_HOME": str(tmp_path / "home"), "EDGELOOP_LOG_LEVEL": "WARNING"}
    port = free_port()
    args = [
        python, "-m", "edge_agent", "--state-dir", str(tmp_path / "state"), "--bundle", str(rf_bundle.bundle),
        "--public-key", str(rf_bundle.public_key), "--device-id", "gw-t", "--group", "plant-t", "--port", str(port),
        "--mqtt-url", broker.url, "--telemetry-interval", "0.3",
    ]  # fmt: skip
    broker.stop()  # the backlog builds up on disk while the broker is away
    process = subprocess.Popen(args, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_ready(f"http://127.0.0.1:{port}")
        for record in records(20, seed=41):
            assert httpx.post(f"http://127.0.0.1:{port}/v1/predict", json=record, timeout=5).status_code == 200
        time.sleep(2.0)
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        from edge_agent.outbox import Outbox

        outbox = Outbox(tmp_path / "state" / "outbox.db")
        backlog = outbox.last_seq("telemetry")
        assert outbox.size() >= backlog >= 3
        outbox.close()
        broker.start()
        process = subprocess.Popen(args, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_ready(f"http://127.0.0.1:{port}")
        windows = probe.wait_for_all("gw-t", "telemetry", backlog, timeout=30)
        assert {w["seq"] for w in windows} >= set(range(1, backlog + 1))
        assert sum(w["records"] for w in {w["seq"]: w for w in windows}.values()) == 20
    finally:
        process.terminate()
        process.wait(15)


def _wait_ready(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"agent at {url} not ready in {timeout}s")
