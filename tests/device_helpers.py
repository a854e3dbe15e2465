"""The device install profile (`make check-edge`, issue 13): with EDGELOOP_DEVICE_PYTHON set to the python of a
venv holding the base package only (Dockerfile.edge's pip steps), every `AgentServer` of the tests marked
`device` is a `python -m edge_agent` process of that venv, configured by EDGELOOP_AGENT_* variables, reached
over HTTP and MQTT only. The first start checks that this python has none of the extras' packages (httpx
included), so a test passing here proves the agent feature works on the device install.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from edge_agent.settings import AgentSettings

__all__ = [
    "DEVICE_PYTHON",
    "NOT_ON_DEVICE",
    "ProcessAgentServer",
    "agent_env",
    "check_base_install",
    "python_for_agents",
]

DEVICE_PYTHON = os.environ.get("EDGELOOP_DEVICE_PYTHON") or None
"""The device venv's python; unset = agents run in the test process (the ordinary suite)."""
NOT_ON_DEVICE = ("httpx", "mlflow", "sklearn", "skl2onnx", "onnx", "pandas", "sqlalchemy", "pytest")
"""Packages the base install must not have: the extras', and the test tools'."""


def python_for_agents() -> tuple[str, dict[str, str]]:
    """(python, environment) for a test that starts `python -m edge_agent` itself: the device venv's python
    without this venv's paths under the profile, else this interpreter."""
    if DEVICE_PYTHON:
        check_base_install(DEVICE_PYTHON)
        return DEVICE_PYTHON, _clean_env()
    return sys.executable, dict(os.environ)


@functools.cache
def check_base_install(python: str) -> None:
    """AssertionError when `python` can import a package only the extras (or the tests) install."""
    probe = "import importlib.util as u, sys; print(','.join(m for m in sys.argv[1:] if u.find_spec(m)))"
    found = subprocess.run(
        [python, "-c", probe, *NOT_ON_DEVICE], capture_output=True, text=True, check=True, env=_clean_env()
    ).stdout.strip()
    assert not found, f"{python} is not a base install: it has {found}"


def _clean_env() -> dict[str, str]:
    """This environment without what would let the device python see the test venv's packages."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}


def agent_env(settings: AgentSettings, given: set[str]) -> dict[str, str]:
    """EDGELOOP_AGENT_* variables for the settings a test gave (complex values as JSON, as pydantic reads them)."""
    env = _clean_env()
    for name, value in settings.model_dump(mode="json", include=given).items():
        if value is None:
            continue
        text = value if isinstance(value, str) else orjson.dumps(value).decode()
        env[f"EDGELOOP_AGENT_{name.upper()}"] = text
    return env


class _RemoteTelemetry:
    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process

    def flush(self) -> None:
        """Close the window now (SIGUSR1, as an operator would); unlike the in-process flush it does not wait."""
        self.process.send_signal(signal.SIGUSR1)


class _RemoteAgent:
    """What tests read from `AgentServer.agent`, through the process's API: `telemetry.flush()` and `status()`."""

    def __init__(self, server: ProcessAgentServer) -> None:
        self.server = server
        self.telemetry = _RemoteTelemetry(server.process) if server.settings.mqtt_url else None

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = self.server.client.get("/v1/model").json()
        return {key: value for key, value in body.items() if key not in ("ready", "model")}


class ProcessAgentServer:
    """`python -m edge_agent` of the device venv on a free port; the same surface as tests' AgentServer
    (settings, url, client, predict, version, wait_version, stop; `agent` has telemetry.flush and status)."""

    def __init__(self, **settings: Any) -> None:
        from tests.agent_helpers import free_port

        assert DEVICE_PYTHON, "EDGELOOP_DEVICE_PYTHON is not set"
        check_base_install(DEVICE_PYTHON)
        settings.setdefault("port", free_port())
        settings.setdefault("download_backoff_s", 0.05)
        settings.setdefault("download_retries", 1)
        settings.setdefault("download_timeout_s", 5.0)
        settings.setdefault("mqtt_reconnect_min_s", 0.2)
        settings.setdefault("mqtt_reconnect_max_s", 1.0)
        self.settings = AgentSettings(**settings)
        self.url = f"http://127.0.0.1:{self.settings.port}"
        state = Path(self.settings.state_dir)
        state.mkdir(parents=True, exist_ok=True)
        self.log = state.parent / f"agent-{self.settings.port}.log"
        with self.log.open("wb") as out:  # cwd: no edgeloop.toml of the checkout
            self.process = subprocess.Popen(
                [DEVICE_PYTHON, "-m", "edge_agent"], env=agent_env(self.settings, set(settings)),
                cwd=state.parent, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        headers = {"Authorization": f"Bearer {self.settings.token}"} if self.settings.token else {}
        self.client = httpx.Client(base_url=self.url, headers=headers, timeout=10)
        deadline = time.monotonic() + 30
        while True:
            try:
                if self.client.get("/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the device agent did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)
        self.agent = _RemoteAgent(self)

    def predict(self, payload: Any) -> httpx.Response:
        return self.client.post("/v1/predict", json=payload)

    def version(self) -> int | None:
        model = self.client.get("/v1/model").json().get("model")
        return int(model["version"]) if model else None

    def wait_version(self, version: int, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while self.version() != version:
            if time.monotonic() > deadline:
                raise AssertionError(f"agent serves v{self.version()}, expected v{version}")
            time.sleep(0.05)

    def stop(self) -> None:
        self.client.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
