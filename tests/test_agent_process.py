"""The agent as a process: `edgeloop agent` / `python -m edge_agent` serve, shut down cleanly on SIGTERM
(offline status published), leave a last will when killed, and import nothing heavy; `python -m edge_agent`
starts without the CLI's libraries (Typer, Rich, Pygments) and accepts the same flags as `edgeloop agent`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import typing
from collections.abc import Iterator
from inspect import signature
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from contracts.topics import device_topic
from edge_agent.settings import AgentSettings
from edgeloop.agent_args import AGENT_OPTIONS, parse_agent_args
from edgeloop.cli import app
from edgeloop.cmd_agent import agent
from tests.agent_helpers import MqttProbe, free_port, record_of
from tests.conftest import Broker, TrainedBundle

HEAVY = ("mlflow", "sklearn", "skl2onnx", "onnx", "pandas", "scipy")
# Not needed to serve: the CLI's libraries, and a WebSocket library (the agent has no WebSocket route).
NOT_AT_START = ("typer", "rich", "pygments", "markdown_it", "shellingham", "websockets", "wsproto")


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


_RUN_MODULE = """
import atexit, json, runpy, sys

report = sys.argv.pop(1)
atexit.register(lambda: open(report, "w").write(json.dumps(sorted({name.split(".")[0] for name in sys.modules}))))
runpy.run_module("edge_agent", run_name="__main__", alter_sys=True)
"""


def test_python_m_edge_agent_serves_without_the_cli_libraries(
    tmp_path: Path, env: dict[str, str], rf_bundle: TrainedBundle
) -> None:
    """The real `python -m edge_agent` start (flags, settings, model, uvicorn, a prediction, SIGTERM) never imports
    Typer, Rich or Pygments: sys.modules is read at the process's exit."""
    port, report = free_port(), tmp_path / "modules.json"
    args = [sys.executable, "-c", _RUN_MODULE, str(report), "--bundle", str(rf_bundle.bundle), f"--port={port}",
            "--state-dir", str(tmp_path / "state"), "--token", "s3cret", "--device-id", "gw-3", "--group", "line-4",
            "--public-key", str(rf_bundle.public_key), "--telemetry-interval", "30"]  # fmt: skip
    process = _start(args, env, tmp_path)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_ready(process, url)
        headers = {"Authorization": "Bearer s3cret"}
        assert httpx.post(f"{url}/v1/predict", json=record_of(rf_bundle.bundle), headers=headers).status_code == 200
        model = httpx.get(f"{url}/v1/model", headers=headers).json()
        assert (model["device_id"], model["group"]) == ("gw-3", "line-4")
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    loaded = set(json.loads(report.read_text()))
    assert {"edge_agent", "uvicorn", "onnxruntime"} <= loaded
    assert loaded.isdisjoint(NOT_AT_START + HEAVY), sorted(loaded & set(NOT_AT_START + HEAVY))


def test_both_entry_points_take_the_same_flags() -> None:
    """`edgeloop agent` (Typer) and the light parser of `python -m edge_agent` know the same flags and types."""
    hints = typing.get_type_hints(agent)  # `X | None` for every option
    names = [name for name in signature(agent).parameters if name not in ("action", "target")]  # positionals
    typer_flags = {f"--{name.replace('_', '-')}": typing.get_args(hints[name])[0] for name in names}
    assert typer_flags == {flag: convert for flag, (_, convert) in AGENT_OPTIONS.items()}
    assert {field for field, _ in AGENT_OPTIONS.values()} <= set(AgentSettings.model_fields)
    assert parse_agent_args([]) == {}
    assert parse_agent_args(["--port=8081", "--bundle", "b", "--telemetry-interval", "2.5"]) == {
        "port": 8081, "bundle": Path("b"), "telemetry_interval_s": 2.5}  # fmt: skip
    # Everything else goes to Typer, which prints the help or the usage error.
    for argv in (["--help"], ["--port", "x"], ["--port"], ["--bundle", "--port", "1"], ["--nope", "1"], ["b"]):
        assert parse_agent_args(argv) is None, argv


def test_python_m_edge_agent_help_and_usage_errors_come_from_typer(tmp_path: Path, env: dict[str, str]) -> None:
    env = {**env, "COLUMNS": "200", "NO_COLOR": "1"}
    run = [sys.executable, "-m", "edge_agent"]
    result = subprocess.run([*run, "--help"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "Example:" in result.stdout and "EDGELOOP_AGENT_TOKEN" in result.stdout
    result = subprocess.run([*run, "--port", "x"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "Invalid value for '--port'" in result.stderr


def test_agent_help_lists_settings_and_an_example() -> None:
    result = CliRunner().invoke(app, ["agent", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "Example:" in result.output
    for name in ("EDGELOOP_AGENT_TOKEN", "EDGELOOP_AGENT_MQTT_URL", "EDGELOOP_AGENT_MAX_BATCH", "--mqtt-url"):
        assert name in result.output


@pytest.mark.parametrize("entry", [["edgeloop", "agent"], ["edge_agent"]], ids=" ".join)
def test_bad_settings_are_one_line_errors(tmp_path: Path, env: dict[str, str], entry: list[str]) -> None:
    args = [sys.executable, "-m", *entry, "--state-dir", str(tmp_path / "s"), "--mqtt-url", "http://x"]
    result = subprocess.run(args, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "mqtt_url" in result.stderr
