"""The agent as a process: `edgeloop agent` / `python -m edge_agent` serve, shut down cleanly on SIGTERM
(offline status published), leave a last will when killed, and import nothing heavy."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from contracts.topics import device_topic
from edgeloop.cli import app
from tests.agent_helpers import MqttProbe, free_port, record_of
from tests.conftest import Broker, TrainedBundle

HEAVY = ("mlflow", "sklearn", "skl2onnx", "onnx", "pandas", "scipy")


@pytest.fixture()
def env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "EDGELOOP_HOME": str(tmp_path / "home"), "EDGELOOP_LOG_LEVEL": "WARNING"}


def _start(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(args, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _wait_ready(process: subprocess.Popen[bytes], url: str, timeout: float = 20.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if process.poll() is not None:
            output = process.stdout.read().decode() if process.stdout else ""
            raise AssertionError(f"agent exited with {process.returncode}: {output}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return time.monotonic() - start
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    process.kill()
    raise AssertionError("agent not ready in time")


@pytest.fixture()
def probe(broker: Broker) -> Iterator[MqttProbe]:
    client = MqttProbe(broker.host, broker.port)
    yield client
    client.stop()


def test_edgeloop_agent_serves_with_a_token_and_stops_cleanly_on_sigterm(
    tmp_path: Path, env: dict[str, str], broker: Broker, probe: MqttProbe, rf_bundle: TrainedBundle
) -> None:
    port = free_port()
    args = [sys.executable, "-m", "edgeloop", "agent", "--bundle", str(rf_bundle.bundle), "--port", str(port),
            "--state-dir", str(tmp_path / "state"), "--token", "s3cret", "--device-id", "gw-1",
            "--mqtt-url", broker.url, "--public-key", str(rf_bundle.public_key)]  # fmt: skip
    process = _start(args, env, tmp_path)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_ready(process, url)
        headers = {"Authorization": "Bearer s3cret"}
        response = httpx.post(f"{url}/v1/predict", json=record_of(rf_bundle.bundle), headers=headers)
        assert response.status_code == 200 and response.json()["model_version"] == 1
        assert httpx.post(f"{url}/v1/predict", json=record_of(rf_bundle.bundle)).status_code == 401
        probe.wait_for("gw-1", "status", lambda s: s["online"] is True)
        probe.wait_for("gw-1", "events", lambda e: e["kind"] == "deployed" and e["model_version"] == 1)
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
        probe.wait_for("gw-1", "status", lambda s: s["online"] is False)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_python_m_edge_agent_leaves_a_retained_last_will_when_killed(
    tmp_path: Path, env: dict[str, str], broker: Broker, probe: MqttProbe, rf_bundle: TrainedBundle
) -> None:
    port = free_port()
    args = [sys.executable, "-m", "edge_agent", "--bundle", str(rf_bundle.bundle), "--port", str(port),
            "--state-dir", str(tmp_path / "state"), "--device-id", "gw-2", "--mqtt-url", broker.url,
            "--public-key", str(rf_bundle.public_key)]  # fmt: skip
    process = _start(args, env, tmp_path)
    try:
        _wait_ready(process, f"http://127.0.0.1:{port}")
        probe.wait_for("gw-2", "status", lambda s: s["online"] is True)
        process.kill()  # no clean disconnect: the broker publishes the will
        process.wait()
        probe.wait_for("gw-2", "status", lambda s: s["online"] is False)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    late = MqttProbe(broker.host, broker.port)  # a new subscriber gets the retained offline status
    try:
        late.wait_for("gw-2", "status", lambda s: s["online"] is False, timeout=5)
        assert any(t == device_topic("gw-2", "status") and retained for t, _, retained in late.messages)
    finally:
        late.stop()


_SCRIPT = """
import json, sys, threading, time, urllib.request
import uvicorn
from edge_agent.app import Agent
from edge_agent.settings import AgentSettings

bundle, state, port, record, key = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
agent = Agent(AgentSettings(bundle=bundle, state_dir=state, port=port, public_key=key))
agent.load()
server = uvicorn.Server(uvicorn.Config(agent.create_app(), port=port, log_config=None, log_level="warning"))
thread = threading.Thread(target=server.run, daemon=True)
thread.start()
while not server.started:
    time.sleep(0.01)
request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/predict", data=record.encode(),
                                 headers={"Content-Type": "application/json"})
answer = json.loads(urllib.request.urlopen(request).read())
server.should_exit = True
thread.join()
heavy = sorted(name for name in sys.modules if name.split(".")[0] in %r)
print(json.dumps({"label": answer["label"], "heavy": heavy}))
"""


def test_running_the_agent_imports_nothing_heavy(tmp_path: Path, env: dict[str, str], rf_bundle: TrainedBundle) -> None:
    record = json.dumps(record_of(rf_bundle.bundle))
    args = [sys.executable, "-c", _SCRIPT % (HEAVY,), str(rf_bundle.bundle), str(tmp_path / "state"),
            str(free_port()), record, str(rf_bundle.public_key)]  # fmt: skip
    result = subprocess.run(args, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["label"] in (0, 1)
    assert report["heavy"] == [], f"the agent imported {report['heavy']}"


def test_agent_help_lists_settings_and_an_example() -> None:
    result = CliRunner().invoke(app, ["agent", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "Example:" in result.output
    for name in ("EDGELOOP_AGENT_TOKEN", "EDGELOOP_AGENT_MQTT_URL", "EDGELOOP_AGENT_MAX_BATCH", "--mqtt-url"):
        assert name in result.output


def test_bad_settings_are_one_line_errors(tmp_path: Path, env: dict[str, str]) -> None:
    args = [sys.executable, "-m", "edgeloop", "agent", "--state-dir", str(tmp_path / "s"), "--mqtt-url", "http://x"]
    result = subprocess.run(args, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "mqtt_url" in result.stderr
