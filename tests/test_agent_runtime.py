"""The agent's model runtime (issue 16): it serves with onnxruntime hidden from the process (a real
`python -m edge_agent` with an import blocker, answering the golden samples on the numpy runtime), says which
runtime serves in /v1/model and /metrics, refuses `runtime = "onnxruntime"` in one line when it cannot import it,
and rejects an update whose model uses an operator the numpy runtime lacks while the old model keeps serving."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import onnx
import pytest
from onnx import helper

from contracts.manifest import sha256_file
from tests.agent_helpers import AgentServer, BundleServer, MqttProbe, desired_state, free_port, manifest_of, resign
from tests.conftest import Broker, TrainedBundle

DEVICE, GROUP = "gw-arm", "armhf"

_HIDDEN = """
import atexit, json, runpy, sys


class NoOnnxruntime:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "onnxruntime":
            raise ModuleNotFoundError("No module named 'onnxruntime' (hidden by the test)", name=name)
        return None


sys.meta_path.insert(0, NoOnnxruntime())
report = sys.argv.pop(1)
atexit.register(lambda: open(report, "w").write(json.dumps(sorted({name.split(".")[0] for name in sys.modules}))))
runpy.run_module("edge_agent", run_name="__main__", alter_sys=True)
"""


def _start(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(args, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _wait_ready(process: subprocess.Popen[bytes], url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = process.stdout.read().decode() if process.stdout else ""
            raise AssertionError(f"agent exited with {process.returncode}: {output}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError("agent not ready in time")


@pytest.fixture()
def env(tmp_path: Path) -> dict[str, str]:
    clean = {key: value for key, value in os.environ.items() if not key.startswith("EDGELOOP_AGENT_")}
    return {**clean, "EDGELOOP_HOME": str(tmp_path / "home"), "EDGELOOP_LOG_LEVEL": "WARNING"}


def test_the_agent_serves_golden_samples_with_onnxruntime_hidden(
    tmp_path: Path, env: dict[str, str], rf_bundle: TrainedBundle
) -> None:
    port, report = free_port(), tmp_path / "modules.json"
    args = [sys.executable, "-c", _HIDDEN, str(report), "--bundle", str(rf_bundle.bundle), f"--port={port}",
            "--state-dir", str(tmp_path / "state"), "--public-key", str(rf_bundle.public_key)]  # fmt: skip
    process = _start(args, env, tmp_path)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_ready(process, url, timeout=60)
        model = httpx.get(f"{url}/v1/model").json()
        assert model["runtime"] == "numpy" and model["model"]["runtime"] == "numpy"
        samples = manifest_of(rf_bundle.bundle).golden_samples
        answers = httpx.post(f"{url}/v1/predict", json=[sample.inputs for sample in samples]).json()["predictions"]
        for sample, answer in zip(samples, answers, strict=True):
            assert answer["label"] == sample.label
            expected = dict(zip(("0", "1"), sample.probabilities, strict=True))
            assert max(abs(answer["probabilities"][key] - p) for key, p in expected.items()) <= 1e-5
        metrics = httpx.get(f"{url}/metrics").text
        assert 'edgeloop_runtime_info{runtime="numpy"} 1.0' in metrics
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    loaded = set(json.loads(report.read_text()))
    assert "edge_agent" in loaded and "onnxruntime" not in loaded
    # Signatures are verified with PyNaCl; cryptography (the signer's library, ~12 MB of RSS) is never loaded.
    assert "nacl" in loaded and "cryptography" not in loaded


def test_runtime_onnxruntime_without_it_is_a_one_line_error(
    tmp_path: Path, env: dict[str, str], rf_bundle: TrainedBundle
) -> None:
    args = [sys.executable, "-c", _HIDDEN, str(tmp_path / "modules.json"), "--bundle", str(rf_bundle.bundle),
            f"--port={free_port()}", "--state-dir", str(tmp_path / "state")]  # fmt: skip
    result = subprocess.run(
        args, env={**env, "EDGELOOP_AGENT_RUNTIME": "onnxruntime"}, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    output = (result.stdout + result.stderr).strip()
    assert "onnxruntime cannot be imported" in output and "Traceback" not in output
    assert len([line for line in output.splitlines() if "onnxruntime" in line]) == 1


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


def _with_abs(model_path: Path, out: Path) -> Path:
    """The model with an `Abs` after its probabilities: onnxruntime runs it, the numpy runtime does not know it."""
    model = onnx.load(str(model_path))
    last = [node for node in model.graph.node if "probabilities" in node.output][-1]
    last.output[list(last.output).index("probabilities")] = "raw_probabilities"
    model.graph.node.append(helper.make_node("Abs", ["raw_probabilities"], ["probabilities"]))
    onnx.checker.check_model(model)
    out.write_bytes(model.SerializeToString())
    return out


def test_an_update_with_an_unknown_operator_is_rejected_and_the_old_model_serves(
    tmp_path: Path,
    broker: Broker,
    probe: MqttProbe,
    files: BundleServer,
    rf_bundle: TrainedBundle,
    logreg_bundle_v2: TrainedBundle,
) -> None:
    agent = AgentServer(state_dir=tmp_path / "state", bundle=rf_bundle.bundle, public_key=rf_bundle.public_key,
                        mqtt_url=broker.url, device_id=DEVICE, group=GROUP, runtime="numpy")  # fmt: skip
    try:
        assert agent.client.get("/v1/model").json()["model"]["runtime"] == "numpy"
        assert 'edgeloop_runtime_info{runtime="numpy"} 1.0' in agent.client.get("/metrics").text
        onnx_file = _with_abs(logreg_bundle_v2.bundle / "model.onnx", tmp_path / "abs.onnx")
        manifest = manifest_of(logreg_bundle_v2.bundle)
        onnx_info: dict[str, Any] = {**manifest.onnx.model_dump(), "sha256": sha256_file(onnx_file)}
        onnx_info["size"] = onnx_file.stat().st_size
        edited, signature = resign(manifest, rf_bundle.keys_dir, onnx=onnx_info)
        url = files.add(logreg_bundle_v2.bundle, "v2.onnx", data=onnx_file.read_bytes())
        events = len(probe.payloads(DEVICE, "events"))
        probe.desire_group(GROUP, desired_state(logreg_bundle_v2.bundle, url, edited, signature))
        event = probe.wait_for(DEVICE, "events", lambda e: e["kind"] == "rejected", since=events)
        assert "operator Abs" in event["reason"] and "\n" not in event["reason"], event
        assert agent.version() == 1
        answer = agent.predict(dict(manifest_of(rf_bundle.bundle).golden_samples[0].inputs))
        assert answer.status_code == 200 and answer.json()["model_version"] == 1
        assert "operator Abs" in agent.client.get("/v1/model").json()["last_error"]
    finally:
        agent.stop()
