"""`edgeloop demo --duration N` as a user runs it: a real subprocess (Mosquitto, the cloud, three agent
processes, traffic, a canary rollout) in a temporary EDGELOOP_HOME. The dashboard's overview (what the page
shows) must list three devices with telemetry, the drifted one above PSI 0.25, and a rollout in progress;
the store is checked on its own too."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from cloud_sync.store import Store, rollouts, windows
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent


def _agent_has_telemetry() -> bool:
    result = subprocess.run(
        [sys.executable, "-m", "edgeloop", "agent", "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"},
        timeout=60,
    )
    return "TELEMETRY" in result.stdout.upper()


@pytest.mark.timeout(150)
def test_demo_runs_the_whole_loop_and_stops_by_itself(tmp_path: Path) -> None:
    if not (shutil.which("mosquitto") or os.path.exists("/usr/sbin/mosquitto")):
        pytest.fail("mosquitto is not installed; run .ci/run or apt-get install mosquitto")
    if not _agent_has_telemetry():
        pytest.skip("this edge agent publishes no telemetry windows yet (no telemetry setting in `edgeloop agent`)")
    home, workdir = tmp_path / "home", tmp_path / "demo"
    env = {**os.environ, "EDGELOOP_HOME": str(home), "COLUMNS": "160", "NO_COLOR": "1"}
    command = [sys.executable, "-m", "edgeloop", "demo", "--duration", "25", "--port", str(free_port())]
    result = subprocess.run(
        [*command, "--workdir", str(workdir), "--telemetry-interval", "3"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=140,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "dashboard: http://127.0.0.1:" in output
    assert "stopped: agents, cloud and broker" in output

    summary = json.loads((workdir / "summary.json").read_text())
    devices = {row["device_id"]: row for row in summary["devices"]}
    assert sorted(devices) == ["gw-1", "gw-2", "gw-3"], output[-2000:]
    for name, row in devices.items():
        assert row["windows"] >= 1 and row["requests"] > 0, (name, row)
        assert row["online"], (name, row)
    drifted = devices["gw-3"]["worst_drift"]
    assert drifted is not None and drifted["psi"] > 0.25 and drifted["band"] == "significant", drifted
    for name in ("gw-1", "gw-2"):
        worst = devices[name]["worst_drift"]
        assert worst is None or worst["psi"] < 0.25, (name, worst)
    rollout = summary["rollouts"][0]
    assert rollout["model"] == "machine-failure/2" and rollout["canary"] == ["gw-1"]
    assert rollout["state"] in ("canary", "soaking"), rollout
    assert devices["gw-1"]["model_version"] == 2 and devices["gw-2"]["model_version"] == 1

    # The store, read on its own: windows from every device, the rollout recorded.
    store = Store(f"sqlite:///{workdir / 'cloud.db'}")
    try:
        with store.engine.connect() as conn:
            per_device = dict(
                conn.execute(sa.select(windows.c.device_id, sa.func.count()).group_by(windows.c.device_id)).all()
            )
            recorded = conn.execute(sa.select(rollouts.c.model_version, rollouts.c.state)).all()
    finally:
        store.dispose()
    assert set(per_device) == {"gw-1", "gw-2", "gw-3"}, per_device
    assert [(row.model_version, row.state) for row in recorded] == [(2, rollout["state"])]
    # Everything it started is gone: nothing listens on the agents' ports any more, and they stopped cleanly.
    for name, agent in summary["agents"].items():
        assert agent["records"] > 0 and agent["errors"] == 0, (name, agent)
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", agent["port"]), timeout=1):
            pass
        log = (workdir / "logs" / f"{name}.log").read_text()
        assert "Traceback" not in log and "agent stopped" in log, log[-1500:]
