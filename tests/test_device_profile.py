"""Issue 13, the device install profile: hybrid inference against a real `edgeloop cloud` process, and a shadow
challenger, checked only through the agent's HTTP API and MQTT, so that `make check-edge` runs them with the
agent as a process of a base-install venv (tests/device_helpers.py). In the ordinary suite the same tests run
with the agent in the test process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from cloud_sync.store.bundles import bundle_tar
from contracts.bundle import load_bundle
from contracts.runtime import OnnxModel
from tests.agent_helpers import AgentServer, MqttProbe, manifest_of
from tests.conftest import Broker, TrainedBundle
from tests.fault_helpers import CloudProcess

pytestmark = pytest.mark.device
TOKEN = "t0ken"


def _model(trained: TrainedBundle) -> OnnxModel:
    return OnnxModel.load(load_bundle(trained.bundle, None, require_signature=False))


def _records(trained: TrainedBundle) -> list[dict]:
    return [dict(sample.inputs) for sample in manifest_of(trained.bundle).golden_samples]


@pytest.fixture()
def cloud(
    broker: Broker, tmp_path: Path, rf_bundle: TrainedBundle, logreg_bundle_v2: TrainedBundle
) -> Iterator[CloudProcess]:
    """`edgeloop cloud` of the dev venv, scoring machine-failure with the logistic regression (v2)."""
    process = CloudProcess(
        tmp_path / "cloud", broker.url, rf_bundle.keys_dir, viewer_tokens='["look"]', operator_tokens='["ops"]',
        score_bundles=orjson.dumps({"machine-failure": "machine-failure/2"}).decode(),
    ).start()  # fmt: skip
    try:
        for trained in (rf_bundle, logreg_bundle_v2):
            uploaded = httpx.put(
                f"{process.url}/v1/bundles", content=bundle_tar(trained.bundle),
                headers={"Authorization": "Bearer ops"}, timeout=30,
            )  # fmt: skip
            assert uploaded.status_code in (200, 201), uploaded.text
        yield process
    finally:
        process.stop()


def test_a_hybrid_agent_answers_locally_above_the_threshold_and_from_the_cloud_below(
    cloud: CloudProcess, tmp_path: Path, rf_bundle: TrainedBundle, logreg_bundle_v2: TrainedBundle
) -> None:
    records = _records(rf_bundle)
    edge, remote = _model(rf_bundle).predict_records(records), _model(logreg_bundle_v2).predict_records(records)
    confidence = edge.probabilities.max(axis=1)
    threshold = min(float(sorted(confidence)[len(confidence) // 2]) + 1e-6, 1.0)  # about half are "unsure"
    agent = AgentServer(
        state_dir=tmp_path / "agent", bundle=rf_bundle.bundle, public_key=rf_bundle.public_key, token=TOKEN,
        hybrid_threshold=threshold, hybrid_url=cloud.url, hybrid_token="look", hybrid_deadline_s=2.0,
    )  # fmt: skip
    try:
        assert agent.client.get("/v1/model").json()["hybrid_threshold"] == threshold
        sources = []
        for index, record in enumerate(records):
            answer = agent.predict(record).json()
            sources.append(answer["answered_by"])
            if confidence[index] < threshold:
                assert answer["answered_by"] == "cloud" and answer["cloud_model"] == "machine-failure/2", answer
                assert answer["label"] == remote.labels[index].item()
                assert answer["probabilities"]["1"] == pytest.approx(float(remote.probabilities[index][1]), abs=1e-6)
            else:
                assert answer["answered_by"] == "edge" and "cloud_model" not in answer, answer
                assert answer["label"] == edge.labels[index].item()
        assert {"cloud", "edge"} <= set(sources)
        # A batch is split the same way, record by record, over the kept-alive connections.
        batch = agent.predict({"records": records}).json()["predictions"]
        assert [p["answered_by"] for p in batch] == sources
    finally:
        agent.stop()


def test_a_shadow_challenger_is_counted_in_the_window_published_over_mqtt(
    broker: Broker, tmp_path: Path, rf_bundle: TrainedBundle, logreg_bundle_v2: TrainedBundle
) -> None:
    probe = MqttProbe(broker.host, broker.port)
    agent = AgentServer(
        state_dir=tmp_path / "agent", bundle=rf_bundle.bundle, public_key=rf_bundle.public_key, token=TOKEN,
        shadow_bundle=logreg_bundle_v2.bundle, mqtt_url=broker.url, telemetry_interval_s=3600, device_id="gw-s",
    )  # fmt: skip
    records = _records(rf_bundle) * 2
    ours = _model(rf_bundle).predict_records(records).labels.tolist()
    theirs = _model(logreg_bundle_v2).predict_records(records).labels.tolist()
    assert ours != theirs, "the test needs records where the two models disagree"
    try:
        assert agent.agent.status()["shadow"] == "machine-failure/2"
        answers = [agent.predict(record).json() for record in records]
        assert [a["label"] for a in answers] == ours  # the champion answers, always
        feedback = [{"prediction_id": a["prediction_id"], "label": 1} for a in answers]
        assert agent.client.post("/v1/feedback", json={"feedback": feedback}).json()["accepted"] == len(records)
        assert agent.agent.telemetry is not None
        agent.agent.telemetry.flush()
        window = probe.wait_for("gw-s", "telemetry", lambda w: sum(w["shadow_agreement"].values()) > 0)
        agree = sum(a == b for a, b in zip(ours, theirs, strict=True))
        assert window["shadow_agreement"] == {"agree": agree, "disagree": len(records) - agree}
        assert window["shadow_model_version"] == 2 and window["model_version"] == 1
        assert window["shadow_confusion"] == {"1": {str(k): theirs.count(k) for k in set(theirs)}}
        metrics = agent.client.get("/metrics").text
        assert f'edgeloop_predictions_total{{model="machine-failure",version="1"}} {len(records)}.0' in metrics
    finally:
        agent.stop()
        probe.stop()
