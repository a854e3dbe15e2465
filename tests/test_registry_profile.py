"""Issue 13, the real-registry profile (`make check-registry`): a real `mlflow server` (tracking and registry
over HTTP, artifacts served by it) on a free port; `train`, `convert`, `deploy NAME@ALIAS`, `score --model
NAME@ALIAS`, `retrain`, `model-card` and `lineage` reach it through MLFLOW_TRACKING_URI alone (no local store
appears); `edgeloop cloud` moves the registry aliases on `rollout promote` and `rollout rollback`, so that
`NAME@champion` and `NAME@fleet-<group>` name the version the group's device runs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from tests.agent_helpers import AgentServer, free_port
from tests.cli_helpers import CliResult, assert_one_line_error, run_edgeloop_subprocess
from tests.conftest import Broker, TrainedBundle
from tests.fault_helpers import CloudProcess, wait_http

pytestmark = pytest.mark.registry
NAME = "press-failure"
GROUP = "line-1"


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    command = [
        str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port),
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--serve-artifacts",
        "--artifacts-destination", str(root / "artifacts"), "--workers", "1",
    ]  # fmt: skip
    # No job runner: MLflow 3 starts a dozen huey consumer processes (~270 MB each) for jobs edgeloop never uses.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    with (root / "server.log").open("wb") as log:
        process = subprocess.Popen(command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", timeout=240, process=process)  # ~50 migrations
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(20)


@pytest.fixture()
def user(mlflow_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A new user's shell: MLFLOW_TRACKING_URI and nothing else; returns EDGELOOP_HOME (checked to stay empty
    of any MLflow store)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.delenv("EDGELOOP_TRACKING_URI", raising=False)
    monkeypatch.delenv("EDGELOOP_CONFIG", raising=False)
    return tmp_path / "home"


def _cli(home: Path, cwd: Path, *args: str) -> CliResult:
    result = run_edgeloop_subprocess(list(args), home, cwd, timeout=300)
    assert result.exit_code == 0, (args, result.stderr[-2000:], result.stdout[-2000:])
    assert "View run" not in result.stdout, result.stdout  # MLflow's own run links stay out of our output
    return result


def _registry(uri: str) -> Any:
    """An MlflowClient on the server (mlflow imported here only: the module is collected in every run)."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def _alias(uri: str, alias: str) -> int:
    return int(_registry(uri).get_model_version_by_alias(NAME, alias).version)


def _wait_alias(uri: str, alias: str, version: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if _alias(uri, alias) == version:
                return
        except Exception:  # the alias may not exist yet
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"@{alias} is not version {version}")
        time.sleep(0.2)


def _scored_version(home: Path, cwd: Path, data: Path, reference: str) -> int:
    out = cwd / f"scored-{time.monotonic_ns()}.parquet"
    _cli(home, cwd, "score", "--model", reference, "--input", str(data), "--output", str(out))
    versions = set(pq.read_table(out, columns=["model_version"]).column("model_version").to_pylist())
    assert len(versions) == 1, versions
    return int(versions.pop())


@pytest.mark.timeout(900)
def test_the_loop_reaches_the_server_through_mlflow_tracking_uri_and_aliases_follow_the_fleet(
    mlflow_server: str, user: Path, tmp_path: Path, broker: Broker, machines_csv: Path
) -> None:
    home, cwd = user, tmp_path
    sample = cwd / "sample.csv"
    sample.write_text("".join(machines_csv.read_text().splitlines(keepends=True)[:201]))
    train = ["train", "--data", str(machines_csv), "--target", "failure_24h", "--name", NAME, "--ignore", "reading_id"]
    first = _cli(home, cwd, *train, "--model", "logreg")
    assert "version 1 as @champion" in first.stdout and f"in {mlflow_server}" in " ".join(first.stdout.split())
    second = _cli(home, cwd, *train, "--model", "rf")
    assert "version 2 as @challenger" in second.stdout
    for alias, out in (("champion", "b1"), ("challenger", "b2")):
        _cli(home, cwd, "convert", f"{NAME}@{alias}", "--out", str(cwd / out))
    card = _cli(home, cwd, "model-card", f"{NAME}@challenger", "--format", "md")
    assert "version **2**" in card.stdout
    assert not list(home.rglob("*.db")) and not (cwd / "mlruns").exists(), "a local MLflow store appeared"
    # The flag and EDGELOOP_TRACKING_URI come first: an unreachable one fails in one line, naming it.
    dead = f"http://127.0.0.1:{free_port()}"
    refused = run_edgeloop_subprocess(["model-card", f"{NAME}@champion", "--tracking-uri", dead], home, cwd)
    assert refused.exit_code != 0
    assert_one_line_error(refused, refused.exit_code, dead, "unreachable")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("EDGELOOP_TRACKING_URI", dead)
        refused = run_edgeloop_subprocess(["deploy", f"{NAME}@champion", "--group", GROUP], home, cwd)
    assert refused.exit_code != 0
    assert_one_line_error(refused, refused.exit_code, dead, "unreachable")

    cloud = CloudProcess(
        cwd / "cloud", broker.url, home / "keys", operator_tokens='["ops"]', registry_champion_group=GROUP
    ).start()
    agent = AgentServer(
        state_dir=cwd / "agent", public_key=home / "keys" / "edgeloop-signing.pub", token="t", device_id="gw-r1",
        group=GROUP, mqtt_url=broker.url, telemetry_interval_s=3600,
    )  # fmt: skip
    ops = ["--cloud-url", cloud.url, "--token", "ops"]
    try:
        assert "no registry access" not in cloud.log.read_text()
        # v1 to the whole group (no canary yet): @fleet-line-1 and @champion name v1, the tag says who runs it.
        _cli(home, cwd, "deploy", f"{NAME}@champion", "--group", GROUP, "--canary", "0", *ops)
        agent.wait_version(1, timeout=30)
        _wait_alias(mlflow_server, f"fleet-{GROUP}", 1)
        _wait_alias(mlflow_server, "champion", 1)  # @champion moves right after @fleet-<group>
        # v2 on the canary, then `rollout promote`: the aliases follow.
        _cli(home, cwd, "deploy", f"{NAME}@challenger", "--group", GROUP, "--canary", "gw-r1", "--soak", "60", *ops)
        agent.wait_version(2, timeout=30)
        assert _alias(mlflow_server, "champion") == 1, "a canary alone moves no alias"
        _cli(home, cwd, "rollout", "promote", "--group", GROUP, "--reason", "registry profile", *ops)
        _wait_alias(mlflow_server, "champion", 2)
        assert _alias(mlflow_server, f"fleet-{GROUP}") == agent.version() == 2
        tags = {v: _registry(mlflow_server).get_model_version(NAME, str(v)).tags for v in (1, 2)}
        assert tags[2]["edgeloop.fleet_groups"] == GROUP and "edgeloop.fleet_groups" not in tags[1]
        assert _scored_version(home, cwd, sample, f"{NAME}@champion") == 2
        # A prediction of the device traces back to the run of the version the registry names.
        answer = agent.predict(_first_record(sample)).json()
        lineage = _cli(home, cwd, "lineage", answer["prediction_id"], "--agent-url", agent.url, "--token", "t")
        assert _registry(mlflow_server).get_model_version(NAME, "2").run_id in lineage.stdout
        # `rollout rollback` after the promotion: the group goes back to v1, and so do the aliases.
        _cli(home, cwd, "rollout", "rollback", "--group", GROUP, "--reason", "registry profile", *ops)
        _wait_alias(mlflow_server, "champion", 1)
        agent.wait_version(1, timeout=30)
        assert _alias(mlflow_server, f"fleet-{GROUP}") == agent.version() == 1
        assert _scored_version(home, cwd, sample, f"{NAME}@champion") == 1
        assert "edgeloop.fleet_groups" not in _registry(mlflow_server).get_model_version(NAME, "2").tags
    finally:
        agent.stop()
        cloud.stop()

    # retrain registers v3 on the same server and tags it there.
    policy = cwd / "retrain.yaml"
    policy.write_text(
        f"model: {NAME}\ntriggers: [manual]\n"
        f"data: {{original: {machines_csv}, target: failure_24h, ignore: [reading_id]}}\n"
        "train: {model: logreg}\nresult: {deploy: wait}\n"
    )
    _cli(home, cwd, "retrain", NAME, "--policy", str(policy), "--workdir", str(cwd / "retrain"))
    third = _registry(mlflow_server).get_model_version(NAME, "3")
    assert third.tags["edgeloop.retrain_trigger"] == "manual"
    assert not list(home.rglob("*.db")), "a local MLflow store appeared"


def _first_record(csv: Path) -> dict[str, object]:
    import pandas as pd

    row = pd.read_csv(csv).drop(columns=["failure_24h", "reading_id"]).iloc[0]
    return {key: (value.item() if hasattr(value, "item") else value) for key, value in row.items()}


def test_a_cloud_without_registry_access_says_so_once_and_keeps_working(
    tmp_path: Path, broker: Broker, monkeypatch: pytest.MonkeyPatch, rf_bundle: TrainedBundle
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    monkeypatch.delenv("EDGELOOP_TRACKING_URI", raising=False)
    cloud = CloudProcess(tmp_path / "cloud", broker.url, rf_bundle.keys_dir, operator_tokens='["ops"]').start()
    try:
        done = run_edgeloop_subprocess(
            ["deploy", str(rf_bundle.bundle), "--group", "g-none", "--canary", "0", "--cloud-url", cloud.url,
             "--token", "ops"], tmp_path / "home", tmp_path,
        )  # fmt: skip
        assert done.exit_code == 0 and "promoted" in done.stdout, done.stderr
        time.sleep(0.5)
        log = cloud.log.read_text()
        assert log.count("no registry access") == 1 and "unreachable" in log
        assert "registry aliases moved" not in log and "registry aliases not moved" not in log
    finally:
        cloud.stop()
