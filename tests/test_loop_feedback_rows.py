"""Feedback rows for retraining, end to end: opt-in on a real agent (kept fields, hourly cap), through the
outbox over MQTT on the `feedback` topic, stored idempotently by the real ingest, read back by
`edgeloop retrain` from the cloud's API (trainer in its own process, lineage tagged), bounded retention; an
agent with the setting off sends nothing."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from mlflow.tracking import MlflowClient

from cloud_sync.loop.feedback_rows import prune
from cloud_sync.store.db import feedback_rows, windows
from contracts.messages import FeedbackRow, FeedbackRows
from contracts.topics import device_topic
from edge_agent.feedback_rows import RowPolicy
from tests.agent_helpers import AgentServer
from tests.cli_helpers import Cli, CliResult, run_edgeloop
from tests.cloud_support import Publisher, count, wait_until
from tests.conftest import Broker, TrainedBundle
from tests.loop_helpers import CloudServer, start_ingest
from tests.test_agent_telemetry import FEATURES, records
from trainer.sample_data import make_machines

OPS = {"Authorization": "Bearer act"}
KEPT = [name for name in FEATURES if name != "site"]  # data minimisation: the site is not kept


@pytest.fixture()
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> Cli:
    monkeypatch.setenv("COLUMNS", "200")

    def run(*args: str) -> CliResult:
        return run_edgeloop(list(args), monkeypatch, capsys, tmp_path / "home")

    return run


def _agent(tmp_path: Path, broker: Broker, trained: TrainedBundle, device: str, **extra: object) -> AgentServer:
    return AgentServer(
        state_dir=tmp_path / device, bundle=trained.bundle, public_key=trained.public_key, token="t",
        device_id=device, group="line-1", mqtt_url=broker.url, telemetry_interval_s=3600, **extra,
    )  # fmt: skip


def _label_all(agent: AgentServer, seed: int, rows: int) -> tuple[list[dict], list[int], list[dict]]:
    batch = records(rows, seed=seed)
    truth = make_machines(rows, seed=seed)["failure_24h"].tolist()
    answers = agent.predict({"records": batch}).json()["predictions"]
    feedback = [{"prediction_id": a["prediction_id"], "label": t} for a, t in zip(answers, truth, strict=True)]
    assert agent.client.post("/v1/feedback", json={"feedback": feedback}).json()["accepted"] == rows
    return batch, truth, answers


@pytest.mark.device
def test_feedback_rows_from_device_to_cloud_to_retrain(
    cli: Cli, broker: Broker, tmp_path: Path, machines_csv: Path, rf_bundle: TrainedBundle
) -> None:
    cloud = CloudServer(broker, tmp_path, rf_bundle, [rf_bundle.bundle])
    ingest = start_ingest(cloud.store, broker)
    on = _agent(tmp_path, broker, rf_bundle, "gw-on", feedback_rows=True, feedback_rows_fields=KEPT,
                feedback_rows_max_per_hour=150)  # fmt: skip
    off = _agent(tmp_path, broker, rf_bundle, "gw-off")
    try:
        batch, truth, answers = _label_all(on, seed=41, rows=200)
        _label_all(off, seed=42, rows=50)
        assert off.agent.telemetry is not None
        off.agent.telemetry.flush()
        wait_until(lambda: count(cloud.store, feedback_rows) >= 150, 15, "feedback rows ingested")
        wait_until(lambda: count(cloud.store, windows) >= 1, 15, "gw-off's window ingested")
        time.sleep(0.3)
        assert count(cloud.store, feedback_rows) == 150  # the hourly cap: 50 rows dropped and counted
        assert on.client.get("/v1/model").json()["feedback_rows"] == {"sent": 150, "dropped": 50}
        listed = httpx.get(f"{cloud.url}/v1/feedback-rows", headers=OPS, params={"model": "machine-failure"}).json()
        assert listed["count"] == 150 and {row["device_id"] for row in listed["rows"]} == {"gw-on"}  # off: nothing
        by_id = {row["prediction_id"]: row for row in listed["rows"]}
        for record, actual, answer in list(zip(batch, truth, answers, strict=True))[:150]:
            row = by_id[answer["prediction_id"]]
            assert row["features"] == {name: record[name] for name in KEPT}  # exactly the kept fields
            assert row["actual"] == str(actual) and row["predicted"] == str(answer["label"])
            assert row["model_version"] == 1 and row["group"] == "line-1"
        # Data, not statistics: a viewer may not read the rows.
        viewer = httpx.get(f"{cloud.url}/v1/feedback-rows", headers={"Authorization": "Bearer look"},
                           params={"model": "machine-failure"})  # fmt: skip
        assert viewer.status_code == 403

        # A redelivered message (at-least-once) inserts nothing.
        first = listed["rows"][0]
        again = FeedbackRows(
            device_id="gw-on", group="line-1", seq=1, model_name="machine-failure", model_version=1,
            rows=[FeedbackRow(prediction_id=first["prediction_id"], made_at=first["made_at"],
                              predicted=first["predicted"], actual=first["actual"], features=first["features"])],
            sent_at=first["made_at"],
        )  # fmt: skip
        publisher = Publisher(broker.host, broker.port)
        publisher.send(device_topic("gw-on", "feedback"), again.model_dump_json())
        publisher.close()
        ingest.wait_idle(5)
        time.sleep(0.3)
        ingest.wait_idle(5)
        assert count(cloud.store, feedback_rows) == 150

        # `edgeloop retrain` takes the newest rows from the cloud instead of a file.
        policy = tmp_path / "retrain.yaml"
        policy.write_text(
            f"model: machine-failure\ndata:\n  original: {machines_csv}\n  target: failure_24h\n"
            "  ignore: [reading_id]\n  feedback_source: cloud\n  feedback_max_rows: 120\ntrain: {model: logreg}\n"
        )
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        done = cli("retrain", "machine-failure", "--policy", str(policy), "--tracking-uri", uri,
                   "--workdir", str(tmp_path / "work"), "--cloud-url", cloud.url, "--token", "act")  # fmt: skip
        assert done.exit_code == 0, done.stderr
        # Fleet-weighted: one device's rows are capped at 4 % of the 2,000 original rows (a seeded sample).
        assert "80 feedback rows" in done.stdout and "gw-on 80 of 120 feedback rows" in done.stdout
        version = MlflowClient(uri).get_model_version("machine-failure", "1")
        tags = MlflowClient(uri).get_run(version.run_id).data.tags
        assert tags["edgeloop.retrain_feedback_rows"] == "80"
        mixture = json.loads(tags["edgeloop.retrain_mixture"])
        assert mixture["cap_rows"] == 80 and [(p["source"], p["received"], p["kept"]) for p in mixture["parts"]] == [
            ("original", 2000, 2000),
            ("gw-on", 120, 80),
        ]
        combined = (tmp_path / "work" / "machine-failure-retrain.csv").read_text().splitlines()
        assert len(combined) == 1 + 2000 + 80 and "device_id" not in combined[0].split(",")
        card = cli("model-card", "machine-failure/1", "--tracking-uri", uri)
        assert card.exit_code == 0, card.stderr
        assert "Training mixture: 2000 original rows (96.2%), gw-on 80 of 120 feedback rows (3.8%); at most 80 " in (
            card.stdout
        )
        assert tags["edgeloop.retrain_feedback_source"].startswith(f"{cloud.url}/v1/feedback-rows?model=")
        fetched = (tmp_path / "work" / "machine-failure-feedback.csv").read_text().splitlines()
        assert len(fetched) == 121 and "site" not in fetched[0].split(",")  # what the device did not keep

        # Bounded retention: by count, then by age.
        assert prune(cloud.store, retention_s=86400, max_rows=100) == 50
        with cloud.store.engine.connect() as conn:
            ids = [row.prediction_id for row in conn.execute(sa.select(feedback_rows.c.prediction_id))]
        assert set(ids) == {row["prediction_id"] for row in listed["rows"][-100:]}  # the newest stay
        assert prune(cloud.store, retention_s=60, max_rows=1000, now=time.time() + 3600) == 100
    finally:
        on.stop()
        off.stop()
        ingest.stop()
        cloud.stop()


def test_sampling_and_fields_are_decided_when_predicting() -> None:
    records_ = [{"a": i, "b": "x", "c": None} for i in range(4000)]
    kept = RowPolicy(sample_rate=0.25, fields=["a", "c"], seed=7).select(records_, ["a", "b", "c"])
    sampled = [row for row in kept if row is not None]
    assert 850 < len(sampled) < 1150  # ~1000 of 4000 (binomial sd ~27)
    assert all(set(row) == {"a", "c"} for row in sampled)
    assert RowPolicy().select(records_[:3], ["a", "b"]) == [{"a": 0, "b": "x"}, {"a": 1, "b": "x"}, {"a": 2, "b": "x"}]
