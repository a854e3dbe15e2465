"""`edgeloop devices`, `edgeloop alerts [--firing]` and `edgeloop alerts ack ID` through the installed command
line against the real `edgeloop cloud` process on a private Mosquitto, with the cloud's simulated devices: a
device that goes offline fires the device-offline rule, an operator lists it and acknowledges it; bad input
and a viewer acting are one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloud_sync.fleet.simulator import SimDevice
from tests.conftest import Broker, TrainedBundle
from tests.fault_helpers import CloudProcess

OPERATOR, VIEWER = "fleet-op", "fleet-view"
EDGELOOP = str(Path(sys.executable).with_name("edgeloop"))


@pytest.fixture()
def cloud(tmp_path: Path, broker: Broker, rf_bundle: TrainedBundle) -> Iterator[CloudProcess]:
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - {name: device-offline, kind: device_offline, threshold: 1s, severity: critical}\n")
    process = CloudProcess(
        tmp_path / "cloud",
        broker.url,
        rf_bundle.keys_dir,
        operator_tokens=json.dumps([f"ops-carol:{OPERATOR}"]),
        viewer_tokens=json.dumps([VIEWER]),
        alert_rules=rules,
        alert_tick_s=0.2,
    ).start()
    yield process
    process.stop()


def _edgeloop(cloud: CloudProcess, *args: str, token: str = OPERATOR) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EDGELOOP_CLOUD_URL": cloud.url, "EDGELOOP_CLOUD_TOKEN": token, "COLUMNS": "200",
           "NO_COLOR": "1", "EDGELOOP_LOG_LEVEL": "WARNING"}  # fmt: skip
    return subprocess.run([EDGELOOP, *args], env=env, capture_output=True, text=True, timeout=60, check=False)


def _json(done: subprocess.CompletedProcess[str]) -> Any:
    assert done.returncode == 0, (done.stdout, done.stderr)
    return json.loads(done.stdout)


def _one_error(done: subprocess.CompletedProcess[str], code: int, *fragments: str) -> None:
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr
    assert all(fragment in errors[0] for fragment in fragments), errors[0]


def test_devices_and_alerts_verbs_against_a_real_cloud(cloud: CloudProcess, broker: Broker) -> None:
    labels = {"gw-1": {"site": "graz", "hw": "pi4"}, "gw-9": {"site": "wien", "hw": "pi4"}}
    devices = [SimDevice(name, group, broker.host, broker.port, model=("machine-failure", 1),
                         labels=labels.get(name)).start()
               for name, group in (("gw-1", "plant-f"), ("gw-2", "plant-f"), ("gw-9", "plant-z"))]  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while len(listed := _json(_edgeloop(cloud, "devices", "--format", "json"))) < 3:
            assert time.monotonic() < deadline, listed
            time.sleep(0.2)
        table = _edgeloop(cloud, "devices")
        assert table.returncode == 0 and "3 devices, 3 online" in table.stdout, table.stdout
        assert all(name in table.stdout for name in ("gw-1", "gw-2", "gw-9", "machine-failure/1")), table.stdout
        group = _json(_edgeloop(cloud, "devices", "--group", "plant-f", "--format", "json", token=VIEWER))
        assert sorted(d["device_id"] for d in group) == ["gw-1", "gw-2"]
        assert all(d["online"] and d["model_version"] == 1 and d["group"] == "plant-f" for d in group), group
        # Labels: shown in the table, and a selector lists what `deploy --selector` would reach.
        assert "hw=pi4,site=graz" in table.stdout and "hw=pi4,site=wien" in table.stdout, table.stdout
        picked = _json(_edgeloop(cloud, "devices", "--selector", "hw=pi4,site!=wien", "--format", "json"))
        assert [(d["device_id"], d["labels"]) for d in picked] == [("gw-1", labels["gw-1"])], picked
        assert [
            d["device_id"] for d in _json(_edgeloop(cloud, "devices", "--selector", "!hw", "--format", "json"))
        ] == ["gw-2"]
        _one_error(_edgeloop(cloud, "devices", "--selector", "hw in ()"), 2, "HTTP 422", "lists no value")

        devices.pop(1).stop()  # gw-2 goes offline (its status message says so): the 1 s rule fires
        deadline = time.monotonic() + 30
        while not (firing := _json(_edgeloop(cloud, "alerts", "--firing", "--format", "json"))):
            assert time.monotonic() < deadline, "the device-offline alert never fired"
            time.sleep(0.3)
        (alert,) = firing
        assert (alert["rule"], alert["subject"], alert["state"]) == ("device-offline", "gw-2", "firing"), alert
        shown = _edgeloop(cloud, "alerts", token=VIEWER)
        assert shown.returncode == 0 and "device-offline" in shown.stdout and "gw-2" in shown.stdout, shown.stdout
        assert f"{len(_json(_edgeloop(cloud, 'alerts', '--format', 'json')))} alerts" in shown.stdout
        offline = _edgeloop(cloud, "devices", "--group", "plant-f")
        assert "2 devices, 1 online" in offline.stdout, offline.stdout

        # A viewer cannot acknowledge; an operator can, and the cloud records who and when.
        _one_error(_edgeloop(cloud, "alerts", "ack", str(alert["id"]), token=VIEWER), 2, "HTTP 403", "--token")
        acked = _edgeloop(cloud, "alerts", "ack", str(alert["id"]), "--reason", "replacing its power supply")
        assert acked.returncode == 0, acked.stderr
        assert f"alert {alert['id']} (device-offline on gw-2, firing) acknowledged by ops-carol" in acked.stdout
        (after,) = _json(_edgeloop(cloud, "alerts", "--firing", "--format", "json"))
        assert after["acknowledged_by"] == "ops-carol" and after["acknowledged_at"], after
        audit = _edgeloop(cloud, "audit", "--format", "jsonl").stdout
        assert "replacing its power supply" in audit, audit

        _one_error(_edgeloop(cloud, "alerts", "ack", "987654"), 3, "HTTP 404")
        _one_error(_edgeloop(cloud, "devices", "--format", "xml"), 2, "--format 'xml'", "table or json")
        _one_error(_edgeloop(cloud, "alerts", "--format", "csv"), 2, "table or json")
        _one_error(_edgeloop(cloud, "devices", token="wrong"), 2, "HTTP 401", "EDGELOOP_CLOUD_TOKEN")
    finally:
        for device in devices:
            device.stop()


def test_an_unreachable_cloud_is_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "EDGELOOP_CLOUD_URL": "http://127.0.0.1:9", "NO_COLOR": "1"}
    for args in (["devices"], ["alerts"], ["alerts", "ack", "1"]):
        done = subprocess.run([EDGELOOP, *args], env=env, capture_output=True, text=True, timeout=60, check=False)
        _one_error(done, 6, "unreachable", "edgeloop cloud")
