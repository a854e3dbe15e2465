"""Helpers for the fault-injection suite (`make test-faults`): the agent and the cloud as real subprocesses
that can be SIGKILLed, a bundle server whose speed and answers the test controls, traffic generators."""

from __future__ import annotations

import http.server
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.agent_helpers import free_port

__all__ = ["AgentProcess", "CloudProcess", "ControlledBundleServer", "Traffic", "wait_http"]


def wait_http(url: str, timeout: float = 90.0, process: subprocess.Popen[bytes] | None = None) -> None:
    """Until `url` answers 200 (a process's start takes ~2 s idle, over 30 s at load 15 on 2 cores)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"process exited with {process.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{url} not ready in {timeout}s")


class AgentProcess:
    """`python -m edge_agent` in its own process (so it can be SIGKILLed); the same state dir across restarts."""

    def __init__(self, workdir: Path, device_id: str, group: str, bundle: Path, public_key: Path,
                 mqtt_url: str | None, token: str = "faults-token", telemetry_interval: float = 0.5,
                 **env: Any) -> None:  # fmt: skip
        self.workdir = workdir
        self.device_id = device_id
        self.state_dir = workdir / "state"
        self.port = free_port()
        self.token = token
        self.log = workdir / "agent.log"
        workdir.mkdir(parents=True, exist_ok=True)
        self.args = [
            sys.executable, "-m", "edge_agent", "--state-dir", str(self.state_dir), "--bundle", str(bundle),
            "--public-key", str(public_key), "--device-id", device_id, "--group", group, "--port", str(self.port),
            "--telemetry-interval", str(telemetry_interval), "--token", token,
        ]  # fmt: skip
        if mqtt_url:
            self.args += ["--mqtt-url", mqtt_url]
        self.env = {
            **os.environ,
            "EDGELOOP_HOME": str(workdir / "home"),
            "EDGELOOP_LOG_LEVEL": "INFO",
            "EDGELOOP_AGENT_MQTT_RECONNECT_MIN_S": "0.2",
            "EDGELOOP_AGENT_MQTT_RECONNECT_MAX_S": "1.0",
            **{f"EDGELOOP_AGENT_{key.upper()}": str(value) for key, value in env.items()},
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.answered = 0
        """Predictions answered with 200 through `predict` (the telemetry windows count them too)."""
        self.url = f"http://127.0.0.1:{self.port}"
        self.headers = {"Authorization": f"Bearer {token}"}

    def start(self, wait: bool = True) -> AgentProcess:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                self.args, env=self.env, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT
            )
        if wait:
            wait_http(f"{self.url}/readyz", process=self.process)
        return self

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def predict(self, record: dict[str, Any]) -> httpx.Response:
        response = httpx.post(f"{self.url}/v1/predict", json=record, headers=self.headers, timeout=10)
        self.answered += response.status_code == 200
        return response

    def model(self) -> dict[str, Any]:
        return dict(httpx.get(f"{self.url}/v1/model", headers=self.headers, timeout=10).json())

    def served_version(self, record: dict[str, Any]) -> int:
        response = self.predict(record)
        assert response.status_code == 200, response.text
        return int(response.json()["model_version"])

    def wait_version(self, record: dict[str, Any], version: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while (served := self.served_version(record)) != version:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.device_id} serves v{served}, expected v{version}; see {self.log}")
            time.sleep(0.1)


class CloudProcess:
    """`edgeloop cloud` in its own process on a SQLite store that survives restarts."""

    def __init__(self, workdir: Path, mqtt_url: str, keys_dir: Path, **env: Any) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.port = free_port()
        self.store_url = f"sqlite:///{workdir / 'cloud.db'}"
        self.log = workdir / "cloud.log"
        self.url = f"http://127.0.0.1:{self.port}"
        executable = Path(sys.executable).with_name("edgeloop")
        self.args = [str(executable), "cloud", "--port", str(self.port), "--mqtt-url", mqtt_url,
                     "--store-url", self.store_url, "--bundles-dir", str(workdir / "bundles")]  # fmt: skip
        self.env = {
            **os.environ,
            "EDGELOOP_HOME": str(workdir / "home"),
            "EDGELOOP_LOG_LEVEL": "INFO",
            "EDGELOOP_CLOUD_KEYS_DIR": str(keys_dir),
            **{f"EDGELOOP_CLOUD_{key.upper()}": str(value) for key, value in env.items()},
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> CloudProcess:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(self.args, env=self.env, cwd=self.workdir, stdout=log, stderr=log)
        wait_http(f"{self.url}/healthz", process=self.process)
        return self

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


class Traffic:
    """A thread posting records to an agent at a steady pace; counts the answers by status."""

    def __init__(self, agent: AgentProcess, records: list[dict[str, Any]], pause_s: float = 0.02) -> None:
        self.agent = agent
        self.records = records
        self.pause_s = pause_s
        self.ok = 0
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Traffic:
        self._thread.start()
        return self

    def _run(self) -> None:
        with httpx.Client(base_url=self.agent.url, headers=self.agent.headers, timeout=10) as client:
            index = 0
            while not self._stop.is_set():
                try:
                    response = client.post("/v1/predict", json=self.records[index % len(self.records)])
                except httpx.TransportError as exc:
                    self.failed.append(f"transport: {exc}")
                else:
                    if response.status_code == 200:
                        self.ok += 1
                    else:
                        self.failed.append(f"{response.status_code}: {response.text[:200]}")
                index += 1
                self._stop.wait(self.pause_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)


class _ControlledHandler(http.server.BaseHTTPRequestHandler):
    server: _ControlledHTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.server.behaviour(self)


class _ControlledHTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    behaviour: Callable[[http.server.BaseHTTPRequestHandler], None]


class ControlledBundleServer:
    """An HTTP server whose answer the test sets: `serve(data, chunk, delay)` sends `data` slowly in chunks;
    `truncate(data, keep)` announces the full length and closes early; `garbage(data)` sends other bytes."""

    def __init__(self) -> None:
        self.httpd = _ControlledHTTPServer(("127.0.0.1", 0), _ControlledHandler)
        self.sent = 0
        self.requests = 0
        self.gate = threading.Event()
        self.gate.set()
        self.serve(b"")
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/model.onnx"

    def serve(self, data: bytes, chunk: int = 1 << 16, delay: float = 0.0, length: int | None = None,
              keep: int | None = None) -> None:  # fmt: skip
        def behaviour(handler: http.server.BaseHTTPRequestHandler) -> None:
            self.requests += 1
            handler.send_response(200)
            handler.send_header("Content-Type", "application/octet-stream")
            handler.send_header("Content-Length", str(len(data) if length is None else length))
            handler.end_headers()
            body = data if keep is None else data[:keep]
            try:
                for start in range(0, len(body), chunk):
                    self.gate.wait()
                    handler.wfile.write(body[start : start + chunk])
                    handler.wfile.flush()
                    self.sent += len(body[start : start + chunk])
                    if delay:
                        time.sleep(delay)
            except (BrokenPipeError, ConnectionResetError):
                pass
            handler.close_connection = True

        self.httpd.behaviour = behaviour

    def stop(self) -> None:
        self.gate.set()
        self.httpd.shutdown()
        self.httpd.server_close()
