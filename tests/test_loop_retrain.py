"""`edgeloop retrain NAME` by hand: original data plus device feedback rows, the trainer in a separate process,
registered as @challenger with the feedback's lineage on the MLflow run, recorded in the cloud's audit log.
Real MLflow (a temp SQLite store of its own), the real cloud API on the test broker."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from tests.cli_helpers import Cli, CliResult, assert_one_line_error, run_edgeloop
from tests.conftest import Broker, TrainedBundle
from tests.loop_helpers import CloudServer


@pytest.fixture()
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> Cli:
    monkeypatch.setenv("COLUMNS", "200")

    def run(*args: str) -> CliResult:
        return run_edgeloop(list(args), monkeypatch, capsys, tmp_path / "home")

    return run


def test_retrain_by_hand_with_feedback_lineage_and_audit(
    cli: Cli, broker: Broker, tmp_path: Path, machines_csv: Path, rf_bundle: TrainedBundle
) -> None:
    from trainer.sample_data import write_machines

    feedback = write_machines(tmp_path / "feedback.csv", rows=400, seed=11, drift=True)
    policy = tmp_path / "retrain.yaml"
    policy.write_text(
        f"model: mf-retrain\ntriggers: [manual, {{alert: feature-drift}}]\n"
        f"data:\n  original: {machines_csv}\n  target: failure_24h\n  ignore: [reading_id]\n"
        f"  feedback: feedback.csv\n  feedback_max_rows: 300\ntrain: {{model: logreg}}\nresult: {{deploy: wait}}\n"
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cloud = CloudServer(broker, tmp_path, rf_bundle, [])
    try:
        args = ["--policy", str(policy), "--tracking-uri", uri, "--workdir", str(tmp_path / "work")]
        first = cli("retrain", "mf-retrain", *args)
        assert first.exit_code == 0, first.stderr
        second = cli("retrain", "mf-retrain", *args, "--cloud-url", cloud.url, "--token", "act", "--reason", "drift")
        assert second.exit_code == 0, second.stderr
        assert "version 2" in second.stdout and "300 feedback rows" in second.stdout
        client = MlflowClient(uri)
        version = client.get_model_version_by_alias("mf-retrain", "challenger")
        assert str(version.version) == "2"
        run = client.get_run(version.run_id)
        tags = run.data.tags
        combined = tmp_path / "work" / "mf-retrain-retrain.csv"
        assert tags["edgeloop.retrain_feedback_sha256"] == hashlib.sha256(feedback.read_bytes()).hexdigest()
        assert tags["edgeloop.retrain_feedback_rows"] == "300" and tags["edgeloop.retrain_trigger"] == "manual"
        assert tags["edgeloop.retrain_original_sha256"] == hashlib.sha256(machines_csv.read_bytes()).hexdigest()
        assert tags["edgeloop.data_sha256"] == hashlib.sha256(combined.read_bytes()).hexdigest()  # the trainer's own
        assert len(pd.read_csv(combined)) == len(pd.read_csv(machines_csv)) + 300
        assert version.tags["edgeloop.retrain_feedback_rows"] == "300"
        # The retrain is in the cloud's append-only audit log, with the actor and the data lineage.
        audit = httpx.get(f"{cloud.url}/v1/audit?action=retrain", headers={"Authorization": "Bearer look"}).json()
        assert len(audit) == 1 and audit[0]["actor"] == "ops" and audit[0]["target"] == "mf-retrain/2"
        assert audit[0]["details"]["run_id"] == version.run_id and audit[0]["reason"] == "drift"
        assert audit[0]["details"]["feedback_sha256"] == tags["edgeloop.retrain_feedback_sha256"]
        # The model card of the retrained version says it was retrained with feedback.
        card = cli("model-card", "mf-retrain@challenger", "--tracking-uri", uri)
        assert "Retrained with device feedback" in card.stdout
        # A viewer cannot record a retrain.
        refused = cli("retrain", "mf-retrain", *args, "--cloud-url", cloud.url, "--token", "look")
        assert_one_line_error(refused, 2, "HTTP 403")
    finally:
        cloud.stop()


def test_retrain_refuses_a_bad_policy(cli: Cli, tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text("model: other\ndata: {original: x.csv}\n")
    assert_one_line_error(cli("retrain", "mf", "--policy", str(policy)), 2, "is for model 'other'")
    policy.write_text("model: mf\ndata: {original: x.csv}\nresult: {deploy: now}\n")
    assert_one_line_error(cli("retrain", "mf", "--policy", str(policy)), 2, "result.deploy")
    policy.write_text("model: mf\ndata: {original: missing.csv}\n")
    assert_one_line_error(cli("retrain", "mf", "--policy", str(policy)), 2, "missing.csv not found")
