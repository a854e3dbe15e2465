"""Business impact end to end: a real agent publishes windows with feedback over MQTT, the real ingest stores
them, a real rollout moves the group from v1 to v2, and GET /v1/impact values each version from the merged
confusion counts and the model's cost/benefit matrix; the deployment's change is v2's value per label
against v1's before it. Expected numbers are computed here from the predictions and the true labels."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloud_sync.ingest.subscriber import Ingest
from cloud_sync.loop.impact import ValueMatrix, load_value_matrices
from cloud_sync.store.db import windows
from contracts.errors import InputError
from tests.agent_helpers import AgentServer
from tests.cloud_support import count, wait_until
from tests.conftest import Broker, TrainedBundle
from tests.loop_helpers import CloudServer
from tests.test_agent_telemetry import records
from trainer.sample_data import make_machines

VIEW = {"Authorization": "Bearer look"}
ACT = {"Authorization": "Bearer act"}
MATRIX = {"tp": 800, "fp": -120, "fn": -2500, "tn": 0}


@pytest.fixture()
def cloud(broker: Broker, tmp_path: Path, rf_bundle: TrainedBundle, logreg_bundle_v2: TrainedBundle) -> Iterator[Any]:
    matrices = {"machine-failure": ValueMatrix.model_validate({"unit": "EUR", **MATRIX})}
    server = CloudServer(
        broker, tmp_path, rf_bundle, [rf_bundle.bundle, logreg_bundle_v2.bundle], value_matrices=matrices
    )
    ingest = Ingest(server.store, broker.url, client_id=f"impact-ingest-{time.monotonic_ns()}")
    ingest.start()
    assert ingest.connected.wait(10)
    server.ingest = ingest  # type: ignore[attr-defined]
    yield server
    ingest.stop()
    server.stop()


def _value(pairs: list[tuple[str, str]]) -> float:
    cell = {("1", "1"): "tp", ("0", "1"): "fp", ("1", "0"): "fn", ("0", "0"): "tn"}
    return float(sum(MATRIX[cell[pair]] for pair in pairs))


def _phase(agent: AgentServer, seed: int) -> list[tuple[str, str]]:
    """400 predictions with feedback for each, one window flushed; (actual, predicted) pairs."""
    truth = make_machines(400, seed=seed)["failure_24h"].tolist()
    answers = agent.predict({"records": records(400, seed=seed)}).json()["predictions"]
    feedback = [{"prediction_id": a["prediction_id"], "label": t} for a, t in zip(answers, truth, strict=True)]
    assert agent.client.post("/v1/feedback", json={"feedback": feedback}).json()["accepted"] == 400
    assert agent.agent.telemetry is not None
    agent.agent.telemetry.flush()
    return [(str(t), str(a["label"])) for a, t in zip(answers, truth, strict=True)]


def test_value_per_version_and_impact_of_a_rollout(
    cloud: Any, broker: Broker, tmp_path: Path, rf_bundle: TrainedBundle
) -> None:
    agent = AgentServer(
        state_dir=tmp_path / "agent", bundle=rf_bundle.bundle, public_key=rf_bundle.public_key, token="t",
        device_id="gw-1", group="line-1", mqtt_url=broker.url,
        telemetry_interval_s=3600,
    )  # fmt: skip
    try:
        wait_until(lambda: _device_version(cloud) == 1, 15, "gw-1 reported v1")
        v1 = _phase(agent, seed=31)
        wait_until(lambda: count(cloud.store, windows) >= 1, 15, "v1 window ingested")
        deployed = httpx.post(
            f"{cloud.url}/v1/rollouts", headers=ACT,
            json={"model_name": "machine-failure", "model_version": 2, "group": "line-1", "canary": "0"},
        )  # fmt: skip
        assert deployed.status_code == 201, deployed.text
        agent.wait_version(2)
        v2 = _phase(agent, seed=32)
        wait_until(lambda: _versions_ingested(cloud) == {1, 2}, 15, "v2 window ingested")

        answer = httpx.get(
            f"{cloud.url}/v1/impact", headers=VIEW, params={"model": "machine-failure", "since": "1h", "period": "1h"}
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["unit"] == "EUR" and body["matrix"]["1"]["0"] == -2500
        by_version = {entry["version"]: entry for entry in body["versions"]}
        for version, pairs in ((1, v1), (2, v2)):
            entry = by_version[version]
            assert entry["labels"] == 400 and entry["records"] == 400
            assert entry["value"] == pytest.approx(_value(pairs))
            assert entry["value_per_label"] == pytest.approx(_value(pairs) / 400)
            assert entry["accuracy"] == pytest.approx(sum(a == p for a, p in pairs) / 400)
            assert entry["unvalued"] == []
        assert len(body["periods"]) == 1 and {v["version"] for v in body["periods"][0]["versions"]} == {1, 2}
        (deployment,) = body["deployments"]
        assert deployment["version"] == 2 and deployment["previous_version"] == 1
        assert deployment["state"] == "promoted" and deployment["group"] == "line-1"
        assert deployment["before"]["value"] == pytest.approx(_value(v1))
        assert deployment["after"]["value"] == pytest.approx(_value(v2))
        change = (_value(v2) - _value(v1)) / 400
        assert deployment["change_per_label"] == pytest.approx(change)
        assert deployment["change_per_1000_predictions"] == pytest.approx(change * 1000)

        assert httpx.get(f"{cloud.url}/v1/impact/models", headers=VIEW).json() == ["machine-failure"]
        # Roles and errors: no token 401, a model without a matrix 404, a bad period 422.
        assert httpx.get(f"{cloud.url}/v1/impact", params={"model": "machine-failure"}).status_code == 401
        missing = httpx.get(f"{cloud.url}/v1/impact", headers=VIEW, params={"model": "other"})
        assert missing.status_code == 404 and "cost/benefit matrix" in missing.json()["detail"]
        bad = httpx.get(f"{cloud.url}/v1/impact", headers=VIEW, params={"model": "machine-failure", "period": "x"})
        assert bad.status_code == 422
    finally:
        agent.stop()


def _device_version(cloud: Any) -> int | None:
    rows = httpx.get(f"{cloud.url}/v1/devices", headers=VIEW).json()
    return rows[0]["model_version"] if rows else None


def _versions_ingested(cloud: Any) -> set[int]:
    import sqlalchemy as sa

    with cloud.store.engine.connect() as conn:
        rows = conn.execute(sa.select(windows.c.model_version).where(windows.c.requests > 0)).all()
    return {row.model_version for row in rows}


def test_value_matrix_file_shorthand_and_general_forms(tmp_path: Path) -> None:
    path = tmp_path / "values.yaml"
    path.write_text(
        "models:\n  mf: {unit: EUR, tp: 5, fp: -1, fn: -9, tn: 0}\n  abc: {values: {a: {a: 1, b: -2}, b: {b: 3}}}\n"
    )
    matrices = load_value_matrices(path)
    assert matrices["mf"].values == {"1": {"1": 5, "0": -9}, "0": {"1": -1, "0": 0}}
    from cloud_sync.loop.impact import value_of

    total, labels, unvalued = value_of({"a": {"a": 2, "b": 1}, "b": {"a": 4, "b": 1}}, matrices["abc"])
    assert (total, labels, unvalued) == (2 * 1 - 2 + 3, 8, ["b->a"])  # an unnamed pair is listed, never hidden
    path.write_text("models:\n  mf: {tp: 1, values: {a: {a: 1}}}\n")
    with pytest.raises(InputError, match="either tp/fp/fn/tn or values"):
        load_value_matrices(path)
    path.write_text("models: [1]\n")
    with pytest.raises(InputError, match="models:"):
        load_value_matrices(path)
