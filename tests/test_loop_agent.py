"""Issue 8 on the device: lineage of a prediction, hybrid inference against the real cloud API (cloud up,
down, slow), and a challenger in shadow beside the champion. Real agents (uvicorn), real bundles, the real
cloud app on the test broker; counts read from the agent's own window counter."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from contracts.bundle import load_bundle
from contracts.errors import IntegrityError
from contracts.runtime import OnnxModel
from tests.agent_helpers import AgentServer, MqttProbe, free_port, manifest_of
from tests.conftest import Broker, TrainedBundle
from tests.loop_helpers import CloudServer, slow_server

TOKEN = "t0ken"


def _records(bundle: Path) -> list[dict]:
    return [dict(sample.inputs) for sample in manifest_of(bundle).golden_samples]


def _agent(trained: TrainedBundle, tmp_path: Path, broker: Broker | None = None, **settings: object) -> AgentServer:
    if broker is not None:
        settings.update(mqtt_url=broker.url, telemetry_interval_s=3600, device_id="gw-1")
    return AgentServer(
        state_dir=tmp_path / "agent", bundle=trained.bundle, public_key=trained.public_key, token=TOKEN, **settings
    )


@pytest.mark.device
def test_lineage_from_a_prediction_id_back_to_run_data_and_code(rf_bundle: TrainedBundle, tmp_path: Path) -> None:
    agent = _agent(rf_bundle, tmp_path, device_id="gw-7", group="line-3")
    try:
        answer = agent.predict(_records(rf_bundle.bundle)[0]).json()
        pid = answer["prediction_id"]
        found = agent.client.get(f"/v1/predictions/{pid}/lineage")
        assert found.status_code == 200, found.text
        body = found.json()
        manifest = manifest_of(rf_bundle.bundle)
        assert body["device_id"] == "gw-7" and body["group"] == "line-3"
        assert body["model"]["name"] == "machine-failure" and body["model"]["version"] == 1
        assert body["model"]["onnx_sha256"] == manifest.onnx.sha256
        assert body["lineage"]["run_id"] == rf_bundle.run_id
        assert body["lineage"]["data_hash"] == manifest.lineage.data_hash and len(body["lineage"]["data_hash"]) == 64
        assert body["lineage"]["code_version"] == manifest.lineage.code_version
        assert body["label"] == answer["label"] and body["answered_by"] == "edge" and body["actual"] is None
        # Feedback consumes the prediction for counting, but its lineage stays, with the true label.
        assert agent.client.post("/v1/feedback", json={"prediction_id": pid, "label": 1}).status_code == 200
        after = agent.client.get(f"/v1/predictions/{pid}/lineage").json()
        assert after["actual"] == 1 and after["lineage"]["run_id"] == rf_bundle.run_id
        # Feedback behaviour is unchanged: a second label for the same prediction is refused.
        assert agent.client.post("/v1/feedback", json={"prediction_id": pid, "label": 0}).status_code == 404
        unknown = agent.client.get("/v1/predictions/nope/lineage")
        assert unknown.status_code == 404 and unknown.json()["type"] == "urn:edgeloop:error:NotFoundError"
        assert (
            agent.client.get(f"/v1/predictions/{pid}/lineage", headers={"Authorization": "Bearer x"}).status_code == 401
        )
    finally:
        agent.stop()


def _cloud_answers(trained: TrainedBundle, records: list[dict]) -> list[float]:
    model = OnnxModel.load(load_bundle(trained.bundle, None, require_signature=False))
    return model.predict_records(records).probabilities.max(axis=1).tolist()


def test_hybrid_low_confidence_records_are_answered_by_the_cloud(
    broker: Broker, tmp_path: Path, rf_bundle: TrainedBundle, logreg_bundle_v2: TrainedBundle
) -> None:
    # The cloud answers machine-failure with another (here: the logistic regression) bundle.
    cloud = CloudServer(
        broker, tmp_path, rf_bundle, [rf_bundle.bundle, logreg_bundle_v2.bundle],
        score_bundles={"machine-failure": "machine-failure/2"},
    )  # fmt: skip
    records = _records(rf_bundle.bundle)
    edge = OnnxModel.load(load_bundle(rf_bundle.bundle, None, require_signature=False))
    confidence = edge.predict_records(records).probabilities.max(axis=1)
    threshold = float(sorted(confidence)[len(confidence) // 2]) + 1e-6  # about half the records are "unsure"
    agent = _agent(rf_bundle, tmp_path, broker, hybrid_threshold=min(threshold, 1.0), hybrid_url=cloud.url,
                   hybrid_token="look", hybrid_deadline_s=2.0)  # fmt: skip
    try:
        agent.agent.service.current.counter.snapshot()  # start from an empty window
        cloud_model = OnnxModel.load(load_bundle(logreg_bundle_v2.bundle, None, require_signature=False))
        expected = cloud_model.predict_records(records)
        sources = []
        for index, record in enumerate(records):
            answer = agent.predict(record).json()
            sources.append(answer["answered_by"])
            if confidence[index] < threshold:
                assert answer["answered_by"] == "cloud" and answer["cloud_model"] == "machine-failure/2"
                assert answer["label"] == expected.labels[index].item()
                assert answer["probabilities"]["1"] == pytest.approx(float(expected.probabilities[index][1]), abs=1e-6)
                lineage = agent.client.get(f"/v1/predictions/{answer['prediction_id']}/lineage").json()
                assert lineage["answered_by"] == "cloud" and lineage["cloud_model"] == "machine-failure/2"
            else:
                assert answer["answered_by"] == "edge" and "cloud_model" not in answer
        assert "cloud" in sources and "edge" in sources
        counts = agent.agent.service.current.counter.snapshot()
        assert counts.answered_by == {"edge": sources.count("edge"), "cloud": sources.count("cloud")}
        # A batch is split the same way, record by record.
        batch = agent.predict({"records": records}).json()["predictions"]
        assert [p["answered_by"] for p in batch] == sources
    finally:
        agent.stop()
        cloud.stop()


@pytest.mark.parametrize("cloud", ["down", "slow"])
def test_hybrid_falls_back_to_the_edge_within_the_deadline(
    broker: Broker, tmp_path: Path, rf_bundle: TrainedBundle, cloud: str
) -> None:
    deadline = 0.15
    with slow_server(2.0) as slow_url:
        url = slow_url if cloud == "slow" else f"http://127.0.0.1:{free_port()}"
        agent = _agent(rf_bundle, tmp_path, broker, hybrid_threshold=1.0, hybrid_url=url, hybrid_deadline_s=deadline)
        try:
            agent.agent.service.current.counter.snapshot()
            record = _records(rf_bundle.bundle)[0]
            edge_only = OnnxModel.load(load_bundle(rf_bundle.bundle, None, require_signature=False))
            expected = edge_only.predict_records([record]).labels[0].item()
            assert max(edge_only.predict_records([record]).probabilities[0]) < 1.0
            for _ in range(3):
                started = time.perf_counter()
                answer = agent.predict(record).json()
                elapsed = time.perf_counter() - started
                assert answer["answered_by"] == "edge_fallback" and answer["label"] == expected
                assert elapsed < deadline + 0.25, f"answer took {elapsed:.3f}s with a {deadline}s deadline"
            assert agent.agent.service.current.counter.snapshot().answered_by == {"edge": 0, "edge_fallback": 3}
        finally:
            agent.stop()


def test_hybrid_is_off_by_default(rf_bundle: TrainedBundle, tmp_path: Path) -> None:
    agent = _agent(rf_bundle, tmp_path)
    try:
        answer = agent.predict(_records(rf_bundle.bundle)[0]).json()
        assert "answered_by" not in answer and agent.agent.service.hybrid is None
    finally:
        agent.stop()


def test_shadow_challenger_counts_agreement_and_its_own_accuracy(
    broker: Broker, tmp_path: Path, rf_bundle: TrainedBundle, logreg_bundle_v2: TrainedBundle
) -> None:
    probe = MqttProbe(broker.host, broker.port)
    agent = _agent(rf_bundle, tmp_path, broker, shadow_bundle=logreg_bundle_v2.bundle)
    try:
        service = agent.agent.service
        assert service.shadow is not None and service.shadow.manifest.version == 2
        service.current.counter.snapshot()
        records = _records(rf_bundle.bundle) * 3
        champion = OnnxModel.load(load_bundle(rf_bundle.bundle, None, require_signature=False))
        challenger = OnnxModel.load(load_bundle(logreg_bundle_v2.bundle, None, require_signature=False))
        ours = champion.predict_records(records).labels.tolist()
        theirs = challenger.predict_records(records).labels.tolist()
        assert ours != theirs, "the test needs records where the two models disagree"
        ids = []
        for record in records[:-3]:
            answer = agent.predict(record).json()
            ids.append(answer["prediction_id"])
        batch = agent.predict({"records": records[-3:]}).json()["predictions"]
        ids += [p["prediction_id"] for p in batch]
        # The champion answers, always.
        assert [p["label"] for p in batch] == ours[-3:]
        truth = [1] * len(records)  # say every reading did lead to a failure
        result = agent.client.post(
            "/v1/feedback",
            json={"feedback": [{"prediction_id": i, "label": t} for i, t in zip(ids, truth, strict=True)]},
        ).json()
        assert result["accepted"] == len(records)
        counts = service.current.counter.snapshot()
        agree = sum(a == b for a, b in zip(ours, theirs, strict=True))
        assert counts.shadow_agreement == {"agree": agree, "disagree": len(records) - agree}
        assert counts.confusion == {"1": {str(k): ours.count(k) for k in set(ours)}}
        assert counts.shadow_confusion == {"1": {str(k): theirs.count(k) for k in set(theirs)}}
        assert counts.shadow_accuracy == theirs.count(1) / len(records)
        lineage = agent.client.get(f"/v1/predictions/{ids[0]}/lineage").json()
        assert lineage["shadow"] == {
            "model": "machine-failure/2",
            "label": theirs[0],
            "run_id": logreg_bundle_v2.run_id,
        }
        # The window published over MQTT carries the counts and names the shadow's version.
        agent.predict(records[0])
        agent.agent.telemetry.flush()
        window = probe.wait_for("gw-1", "telemetry", lambda w: sum(w["shadow_agreement"].values()) == 1)
        assert window["shadow_model_version"] == 2 and window["model_version"] == 1
    finally:
        agent.stop()
        probe.stop()


def test_a_tampered_shadow_bundle_is_refused(
    rf_bundle: TrainedBundle, logreg_bundle_v2: TrainedBundle, tmp_path: Path
) -> None:
    bad = tmp_path / "shadow"
    shutil.copytree(logreg_bundle_v2.bundle, bad)
    data = bytearray((bad / "model.onnx").read_bytes())
    data[-10] ^= 0xFF
    (bad / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(IntegrityError):
        _agent(rf_bundle, tmp_path, shadow_bundle=bad)
