"""`edgeloop demo` as a user runs it: a real subprocess (Mosquitto, the cloud with its retrain triggers, three
agent processes, traffic with feedback on the drifted device) in a temporary EDGELOOP_HOME.

The fast test (normal suite) cuts the run short: the dashboard's overview (what the page shows) must list
three devices with telemetry, the drifted one above PSI 0.25, the drift alert firing and the retrain it
started in the audit log; the retraining job is stopped with the demo. The full loop (about two minutes on
two cores: retrain, convert, shadow soak, promotion) is in `make test-faults`: the alert fires, the retrain
starts on its own, the challenger runs in shadow on gw-3, its measured accuracy is at least the champion's,
it is promoted to the group, all in the audit log and the rollouts the dashboard lists; and it ends calm (issue 18):
gw-3's drift accepted, its alerts resolved with that reason, nothing firing, gw-1 and gw-2 never drifted."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest
import sqlalchemy as sa

from cloud_sync.store.db import Store, rollouts, windows
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


def _run_demo(tmp_path: Path, *args: str, timeout: float) -> tuple[str, dict[str, Any], Path]:
    if not (shutil.which("mosquitto") or os.path.exists("/usr/sbin/mosquitto")):
        pytest.fail("mosquitto is not installed; run .ci/run or apt-get install mosquitto")
    if not _agent_has_telemetry():
        pytest.skip("this edge agent publishes no telemetry windows yet (no telemetry setting in `edgeloop agent`)")
    home, workdir = tmp_path / "home", tmp_path / "demo"
    env = {**os.environ, "EDGELOOP_HOME": str(home), "COLUMNS": "200", "NO_COLOR": "1"}
    command = [sys.executable, "-m", "edgeloop", "demo", "--port", str(free_port()), "--workdir", str(workdir)]
    result = subprocess.run(
        [*command, "--telemetry-interval", "3", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=timeout,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "dashboard: http://127.0.0.1:" in output
    assert "stopped: agents, cloud and broker" in output
    return output, json.loads((workdir / "summary.json").read_text()), workdir


def _nothing_left(summary: dict[str, Any], workdir: Path) -> None:
    """Everything the demo started is gone: agents (stopped cleanly), their ports, any retraining job."""
    for name, agent in summary["agents"].items():
        assert agent["records"] > 0 and agent["errors"] == 0, (name, agent)
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", agent["port"]), timeout=1):
            pass
        log = (workdir / "logs" / f"{name}.log").read_text()
        assert "Traceback" not in log and "agent stopped" in log, log[-1500:]
    leftovers = []
    for process in psutil.process_iter(["cmdline"]):
        if str(workdir) in " ".join(process.info["cmdline"] or []):
            leftovers.append(process.info["cmdline"])
    assert not leftovers, leftovers


def _actions(summary: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for entry in summary["audit"]:
        found.setdefault(entry["action"], []).append(entry)
    return found


@pytest.mark.timeout(150)
def test_demo_fleet_drifts_fires_the_alert_and_starts_a_retrain(tmp_path: Path) -> None:
    # Cut short (the loop needs about two minutes): 25 s of fleet, at most 10 s more for the loop.
    output, summary, workdir = _run_demo(tmp_path, "--duration", "25", "--loop-timeout", "10", timeout=140)
    devices = {row["device_id"]: row for row in summary["devices"]}
    assert sorted(devices) == ["gw-1", "gw-2", "gw-3"], output[-2000:]
    for name, row in devices.items():
        assert row["windows"] >= 1 and row["requests"] > 0, (name, row)
        assert row["online"], (name, row)
        assert row["model_version"] == 1, (name, row)
    drifted = devices["gw-3"]["worst_drift"]
    assert drifted is not None and drifted["psi"] > 0.25 and drifted["band"] == "significant", drifted
    assert drifted["drifted"] is True and drifted["p_value"] < 0.01 and drifted["count"] > 0, drifted
    for name in ("gw-1", "gw-2"):
        worst = devices[name]["worst_drift"]
        assert worst is None or (worst["psi"] < 0.25 and not worst["drifted"]), (name, worst)
    assert summary["agents"]["gw-3"]["feedback"] > 100 and summary["agents"]["gw-1"]["feedback"] == 0
    # The drift alert fired on gw-3, and the cloud started the policy's retrain on its own.
    assert summary["loop"]["alert"]["rule"] == "feature-drift", summary["loop"]
    assert summary["loop"]["alert"]["subject"].startswith("gw-3/")
    fired = [a for a in summary["alerts"] if a["rule"] == "feature-drift" and a["subject"].startswith("gw-3/")]
    assert fired and all(a["p_value"] < 0.01 and a["records"] > 0 for a in fired), fired  # effect and evidence
    assert not [a for a in summary["alerts"] if a["subject"].startswith(("gw-1", "gw-2"))], summary["alerts"]
    # Issue 18: the healthy devices show no drift at any point of the run (the demo looked about once a second).
    assert summary["healthy_drift"]["drifted"] == [] and summary["healthy_drift"]["looks"] > 0, summary["healthy_drift"]
    assert "drift alert: feature-drift fired on gw-3/" in output
    (triggered,) = _actions(summary)["retrain triggered"]
    assert triggered["actor"] == "controller" and triggered["details"]["trigger"] == "alert:feature-drift"
    assert "retrain started by the cloud (alert:feature-drift)" in output
    assert "loop not closed" in output and "loop closed" not in output
    policy = (workdir / "retrain.yaml").read_text()
    assert "feedback_source: cloud" in policy and "deploy: shadow-canary" in policy and "canary: gw-3" in policy

    store = Store(f"sqlite:///{workdir / 'cloud.db'}")
    try:
        with store.engine.connect() as conn:
            per_device = dict(
                conn.execute(sa.select(windows.c.device_id, sa.func.count()).group_by(windows.c.device_id)).all()
            )
    finally:
        store.dispose()
    assert set(per_device) == {"gw-1", "gw-2", "gw-3"}, per_device
    _nothing_left(summary, workdir)


@pytest.mark.faults
@pytest.mark.timeout(720)
def test_demo_closes_the_loop_by_itself(tmp_path: Path) -> None:
    """Issue 8's "Done when": drift on gw-3 -> alert -> retrain on its own -> challenger in shadow on the canary
    -> measured accuracy at least the champion's -> promoted; on the dashboard's API and in the audit log."""
    output, summary, workdir = _run_demo(tmp_path, "--duration", "5", timeout=700)
    loop = summary["loop"]
    assert loop.get("outcome") == "closed", output[-4000:]
    assert loop["challenger_accuracy"] >= loop["champion_accuracy"], loop
    line = next(text for text in output.splitlines() if text.startswith("loop closed:"))
    assert line.startswith("loop closed: challenger v2 promoted after shadow accuracy "), line
    assert f"{loop['challenger_accuracy']:.3f} vs champion {loop['champion_accuracy']:.3f}" in line

    actions = _actions(summary)
    (triggered,) = actions["retrain triggered"]
    assert triggered["details"]["trigger"] == "alert:feature-drift" and "on gw-3/" in triggered["reason"]
    (retrain,) = actions["retrain"]
    assert retrain["target"] == "machine-failure/2" and retrain["details"]["deploy"] == "shadow-canary"
    assert retrain["details"]["feedback_rows"] > 100, retrain  # trained on gw-3's drifted feedback rows
    (deploy,) = actions["deploy"]
    assert deploy["target"] == "machine-failure/2 -> group plant-a" and "shadow" in deploy["reason"]
    (promote,) = actions["promote"]
    details = promote["details"]
    assert promote["actor"] == "controller" and details["mode"] == "shadow" and details["canary"] == ["gw-3"]
    assert details["challenger_accuracy"] >= details["champion_accuracy"]
    assert min(details["labels"], details["challenger_labels"]) >= details["min_labels"] == 400
    assert "rollback" not in actions and "retrain failed" not in actions
    ids = [entry["id"] for entry in (triggered, retrain, deploy, promote)]
    assert ids == sorted(ids), ids
    assert "audit log (" in output and "controller promote" in output

    (rollout,) = summary["rollouts"]  # what the dashboard's Rollouts page lists
    assert rollout["model"] == "machine-failure/2" and rollout["mode"] == "shadow" and rollout["state"] == "promoted"
    assert rollout["canary"] == ["gw-3"] and rollout["previous_version"] == 1
    devices = {row["device_id"]: row for row in summary["devices"]}
    assert {name: row["model_version"] for name, row in devices.items()} == {"gw-1": 2, "gw-2": 2, "gw-3": 2}
    # Issue 18: the loop ends calm. The alerts that started it resolved with the acceptance's reason, nothing
    # fires, and the healthy devices never showed a drift verdict on the dashboard during the whole run.
    (accepted,) = actions["accept drift"]
    reason = (
        f"accepted: machine-failure v2 validated on gw-3's data, shadow accuracy {details['challenger_accuracy']:.3f}"
    )
    assert accepted["target"] == "gw-3" and accepted["reason"].startswith(reason), accepted
    assert summary["alerts"] == [], summary["alerts"]
    resolved = [a for a in summary["resolved_alerts"] if a["rule"] == "feature-drift"]
    assert resolved and all(a["subject"].startswith("gw-3/") for a in resolved), resolved
    assert {a["resolution"] for a in resolved} == {accepted["reason"]}, resolved
    assert sorted(accepted["details"]["resolved_alerts"]) == sorted(a["id"] for a in resolved)
    assert summary["healthy_drift"]["drifted"] == [] and summary["healthy_drift"]["looks"] > 10, summary[
        "healthy_drift"
    ]
    assert "alerts firing: none" in output and f"drift on gw-3 accepted, {len(resolved)} alert(s) resolved" in output
    assert retrain["details"]["mixture"]["parts"][1]["source"] == "gw-3"  # the model card's mixture, capped
    assert retrain["details"]["mixture"]["parts"][1]["kept"] == retrain["details"]["feedback_rows"] <= 120

    store = Store(f"sqlite:///{workdir / 'cloud.db'}")
    try:
        with store.engine.connect() as conn:
            recorded = conn.execute(sa.select(rollouts.c.model_version, rollouts.c.state, rollouts.c.mode)).all()
    finally:
        store.dispose()
    assert [tuple(row) for row in recorded] == [(2, "promoted", "shadow")]
    _nothing_left(summary, workdir)
