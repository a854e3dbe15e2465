"""`edgeloop rollout status --wait` against the real `edgeloop cloud` process and a private Mosquitto, with the
cloud's own simulated devices (small MQTT clients that install, report and reject like the agent on the wire).
Each end of a rollout is its own exit code: promoted 0, rolled back 10, timeout 12 (failed is 11); the wait
prints one progress line per change and the final per-device table. Plus `edgeloop --version`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloud_sync.fleet.simulator import SimDevice
from contracts.errors import RolloutFailed, RolloutRolledBack, RolloutWaitTimeout
from tests.conftest import Broker, TrainedBundle
from tests.fault_helpers import CloudProcess

GROUP = "line-wait"
OPERATOR = "wait-secret"
AUTH = {"Authorization": f"Bearer {OPERATOR}"}
EDGELOOP = str(Path(sys.executable).with_name("edgeloop"))
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def cloud(tmp_path: Path, broker: Broker, rf_bundle: TrainedBundle) -> Iterator[CloudProcess]:
    process = CloudProcess(
        tmp_path / "cloud",
        broker.url,
        rf_bundle.keys_dir,
        operator_tokens=json.dumps([f"ops-bob:{OPERATOR}"]),
        rollout_tick_s=0.2,
    ).start()
    yield process
    process.stop()


def _edgeloop(cloud: CloudProcess, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EDGELOOP_HOME": str(home), "EDGELOOP_CLOUD_URL": cloud.url, "EDGELOOP_CLOUD_TOKEN": OPERATOR,
           "COLUMNS": "200", "NO_COLOR": "1", "EDGELOOP_LOG_LEVEL": "WARNING"}  # fmt: skip
    return subprocess.run([EDGELOOP, *args], env=env, capture_output=True, text=True, timeout=90, check=False)


def _latest(cloud: CloudProcess) -> dict[str, Any]:
    response = httpx.get(f"{cloud.url}/v1/rollouts/latest?group={GROUP}", headers=AUTH)
    response.raise_for_status()
    return dict(response.json())


def _errors(done: subprocess.CompletedProcess[str]) -> list[str]:
    assert "Traceback" not in done.stderr, done.stderr
    return [line for line in done.stderr.splitlines() if line.startswith("error:")]


def test_wait_exits_0_when_promoted_10_when_rolled_back_12_on_timeout(
    tmp_path: Path, cloud: CloudProcess, broker: Broker, rf_bundle: TrainedBundle, logreg_bundle_v2: TrainedBundle
) -> None:
    def health_check(manifest: dict[str, Any]) -> str | None:  # dev-2 refuses v2, as a failed golden sample would
        return "golden sample 1: label 1 != 0" if manifest["version"] == 2 else None

    devices = [SimDevice(f"dev-{i}", GROUP, broker.host, broker.port).start() for i in (1, 3)]
    devices.append(SimDevice("dev-2", GROUP, broker.host, broker.port, reject=health_check).start())
    home = tmp_path / "operator"
    wait = ("rollout", "status", "--group", GROUP, "--wait", "--interval", "0.2")
    try:
        for _ in range(100):  # the cloud learns the devices from their retained status messages
            listed = httpx.get(f"{cloud.url}/v1/devices?group={GROUP}", headers=AUTH)
            if len(listed.json()) == 3:
                break
            time.sleep(0.1)
        # v1 to the whole group: no canary, promoted at once -> exit 0, the last line shows the group on it.
        first = _edgeloop(cloud, home, "deploy", str(rf_bundle.bundle), "--group", GROUP, "--canary", "0")
        assert first.returncode == 0, first.stderr
        done = _edgeloop(cloud, home, *wait, "--timeout", "30")
        assert done.returncode == 0, (done.stdout, done.stderr)
        assert "promoted:" in done.stdout and "state promoted" in done.stdout, done.stdout

        # v2 to canary dev-2, which rejects it: the wait follows it from canary to rolled_back -> exit 10.
        out = _edgeloop(cloud, home, "deploy", str(logreg_bundle_v2.bundle), "--group", GROUP, "--canary", "dev-2",
                        "--soak", "10")  # fmt: skip
        assert out.returncode == 0 and "state canary" in out.stdout, (out.stdout, out.stderr)
        done = _edgeloop(cloud, home, *wait, "--timeout", "60")
        assert done.returncode == RolloutRolledBack.exit_code == 10, (done.stdout, done.stderr)
        (error,) = _errors(done)
        assert "was rolled back" in error and "dev-2 rejected machine-failure/2" in error, error
        assert "rolled_back: " in done.stdout and "state rolled_back" in done.stdout, done.stdout
        assert _latest(cloud)["state"] == "rolled_back"

        # v2 again, to canary dev-1 that accepts it, with a 10-minute soak: a 1.5 s wait runs out -> exit 12.
        out = _edgeloop(cloud, home, "deploy", str(logreg_bundle_v2.bundle), "--group", GROUP, "--canary", "dev-1",
                        "--soak", "10")  # fmt: skip
        assert out.returncode == 0, (out.stdout, out.stderr)
        done = _edgeloop(cloud, home, *wait, "--timeout", "1.5")
        assert done.returncode == RolloutWaitTimeout.exit_code == 12, (done.stdout, done.stderr)
        (error,) = _errors(done)
        assert "after 1.5s" in error and ("still canary" in error or "still soaking" in error), error
        assert _latest(cloud)["state"] in ("canary", "soaking")
    finally:
        for device in devices:
            device.stop()


def test_wait_against_an_unreachable_cloud_times_out_with_the_cause(tmp_path: Path) -> None:
    """The first call is not retried (a wrong URL is a clear error at once), exit 6 as for every other verb."""
    env = {**os.environ, "EDGELOOP_HOME": str(tmp_path), "NO_COLOR": "1"}
    done = subprocess.run([EDGELOOP, "rollout", "status", "--wait", "--cloud-url", "http://127.0.0.1:9"], env=env,
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 6, done.stderr
    (error,) = _errors(done)
    assert "unreachable" in error, error


def test_exit_codes_are_distinct_and_documented() -> None:
    codes = {cls.exit_code for cls in (RolloutRolledBack, RolloutFailed, RolloutWaitTimeout)}
    assert codes == {10, 11, 12}
    shown = subprocess.run([EDGELOOP, "rollout", "status", "--help"], capture_output=True, text=True, check=True,
                           env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}).stdout  # fmt: skip
    assert "10 when rolled back" in shown and "11 when failed" in shown and "12 when --timeout" in shown, shown
    loop = (ROOT / "docs" / "loop.md").read_text()
    assert all(f"| {code} " in loop for code in (0, 10, 11, 12)), "docs/loop.md lists the exit codes of --wait"


def test_version_matches_the_package() -> None:
    done = subprocess.run([EDGELOOP, "--version"], capture_output=True, text=True, check=True, timeout=30)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert done.stdout.strip() == f"edgeloop {project}" == f"edgeloop {version('edgeloop')}", done.stdout
