"""The agent speaks the field's protocols: Open Inference Protocol V2 driven by the real `tritonclient.http`
(binary and JSON tensors) and by plain HTTP, and MLflow's scoring protocol driven by MLflow's own scoring
client and by each of its four JSON formats and CSV. Every answer has the same labels and probabilities as
`/v1/predict` for the same rows, prediction ids that `/v1/feedback` takes, the same auth and schema errors,
and (on a real Mosquitto) the same telemetry windows and drift."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
import tritonclient.http as triton
from mlflow.pyfunc.scoring_server.client import ScoringServerClient
from tritonclient.utils import InferenceServerException

from contracts.manifest import Manifest
from tests.agent_helpers import AgentServer, MqttProbe, manifest_of
from tests.conftest import Broker, TrainedBundle
from trainer.sample_data import FEATURES, make_machines

TOKEN = "proto-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}  # tritonclient adds its own headers to the dict it is given: pass copies
NAME = "machine-failure"


def _rows(count: int, seed: int, drift: bool = False) -> list[dict[str, Any]]:
    frame = make_machines(count, seed=seed, drift=drift)[FEATURES].astype(object)
    return frame.where(frame.notna(), None).to_dict(orient="records")


@pytest.fixture(scope="module")
def agent(rf_bundle: TrainedBundle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentServer]:
    server = AgentServer(
        state_dir=tmp_path_factory.mktemp("agent-protocols"),
        bundle=rf_bundle.bundle,
        public_key=rf_bundle.public_key,
        token=TOKEN,
        max_batch=200,
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def rows() -> list[dict[str, Any]]:
    chosen = _rows(300, seed=11)
    with_missing = [r for r in chosen if None in r.values()][:6]  # missing numbers and categories included
    assert with_missing and any(r["firmware"] is None for r in with_missing)
    return [*chosen[:14], *with_missing]


@pytest.fixture(scope="module")
def expected(agent: AgentServer, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What /v1/predict answers for the rows: the reference every protocol must match."""
    response = agent.predict({"records": rows})
    assert response.status_code == 200, response.text
    return list(response.json()["predictions"])


def _same(answers: list[tuple[Any, list[float]]], expected: list[dict[str, Any]], classes: list[str]) -> None:
    assert len(answers) == len(expected)
    for (label, probabilities), reference in zip(answers, expected, strict=True):
        assert label == reference["label"]
        want = [reference["probabilities"][c] for c in classes]
        assert all(
            math.isclose(got, exp, rel_tol=0, abs_tol=1e-7) for got, exp in zip(probabilities, want, strict=True)
        ), (
            probabilities,
            want,
        )


def _mlflow_pairs(answer: Any) -> list[tuple[Any, list[float]]]:
    """(label, probabilities in class order) per row of an /invocations answer."""
    return [(label, list(p.values())) for label, p in zip(answer["predictions"], answer["probabilities"], strict=True)]


def _triton_inputs(manifest: Manifest, rows: list[dict[str, Any]], binary: bool) -> list[triton.InferInput]:
    inputs = []
    for spec in manifest.inputs:
        column = [row[spec.name] for row in rows]
        if spec.kind == "numeric":
            array = np.array([math.nan if v is None else v for v in column], dtype=np.float32).reshape(-1, 1)
            tensor = triton.InferInput(spec.name, list(array.shape), "FP32")
        else:  # a missing category is the empty string, as the pipeline reads None
            array = np.array([("" if v is None else v).encode() for v in column], dtype=np.object_).reshape(-1, 1)
            tensor = triton.InferInput(spec.name, list(array.shape), "BYTES")
        tensor.set_data_from_numpy(array, binary_data=binary)  # JSON: tritonclient writes NaN, the agent reads it
        inputs.append(tensor)
    return inputs


@pytest.mark.parametrize("binary", [True, False], ids=["binary-tensors", "json-tensors"])
def test_tritonclient_gets_the_labels_and_probabilities_of_v1_predict(
    agent: AgentServer, rf_bundle: TrainedBundle, rows: list[dict[str, Any]], expected: list[dict], binary: bool
) -> None:
    manifest = manifest_of(rf_bundle.bundle)
    client = triton.InferenceServerClient(url=agent.url.removeprefix("http://"))
    try:
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(NAME)
        assert not client.is_model_ready("some-other-model")
        meta = client.get_model_metadata(NAME, headers=dict(AUTH))
        assert meta["versions"] == ["1"]
        assert [(i["name"], i["datatype"]) for i in meta["inputs"]] == [
            (s.name, "FP32" if s.kind == "numeric" else "BYTES") for s in manifest.inputs
        ]
        outputs = [triton.InferRequestedOutput(name, binary_data=binary) for name in ("label", "probabilities")]
        outputs.append(triton.InferRequestedOutput("prediction_id", binary_data=binary))
        result = client.infer(NAME, _triton_inputs(manifest, rows, binary), outputs=outputs, headers=dict(AUTH))
        labels, probabilities = result.as_numpy("label"), result.as_numpy("probabilities")
        assert probabilities.shape == (len(rows), len(manifest.classes)) and probabilities.dtype == np.float32
        classes = [str(c) for c in manifest.classes]
        _same(
            [(int(lab), list(map(float, p))) for lab, p in zip(labels, probabilities, strict=True)], expected, classes
        )
        ids = [value.decode() if isinstance(value, bytes) else value for value in result.as_numpy("prediction_id")]
        assert len(set(ids)) == len(rows)
        assert result.get_response()["model_version"] == "1"
        # The default call (no outputs named): every output, in binary; the version path; a request id echoed.
        whole = client.infer(NAME, _triton_inputs(manifest, rows[:3], binary), model_version="1", request_id="r-7",
                             headers=dict(AUTH))  # fmt: skip
        assert whole.get_response()["id"] == "r-7" and list(whole.as_numpy("label")) == [
            e["label"] for e in expected[:3]
        ]
        # The ids are real prediction ids: /v1/feedback takes them.
        feedback = agent.client.post("/v1/feedback", json={"prediction_id": ids[0], "label": expected[0]["label"]})
        assert feedback.status_code == 200, feedback.text
        # Errors come back as tritonclient exceptions carrying the agent's one-line message.
        with pytest.raises(InferenceServerException, match="bearer token"):
            client.infer(NAME, _triton_inputs(manifest, rows[:1], binary))
        with pytest.raises(InferenceServerException, match="not served here"):
            client.infer("another-model", _triton_inputs(manifest, rows[:1], binary), headers=dict(AUTH))
        with pytest.raises(InferenceServerException, match="version 9 is not served"):
            client.infer(NAME, _triton_inputs(manifest, rows[:1], binary), model_version="9", headers=dict(AUTH))
    finally:
        client.close()


def _v2_body(rows: list[dict[str, Any]], manifest: Manifest) -> dict[str, Any]:
    inputs = []
    for spec in manifest.inputs:
        data = [row[spec.name] for row in rows]
        datatype = "FP32" if spec.kind == "numeric" else "BYTES"
        inputs.append({"name": spec.name, "shape": [len(rows), 1], "datatype": datatype, "data": data})
    return {"inputs": inputs}


def test_plain_http_v2_and_its_errors(agent: AgentServer, rf_bundle: TrainedBundle, rows: list, expected: list) -> None:
    manifest = manifest_of(rf_bundle.bundle)
    infer = f"/v2/models/{NAME}/infer"
    response = agent.client.post(infer, json=_v2_body(rows, manifest))
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    assert outputs["label"]["datatype"] == "INT64" and outputs["probabilities"]["shape"] == [len(rows), 2]
    flat = outputs["probabilities"]["data"]
    _same([(lab, flat[2 * i : 2 * i + 2]) for i, lab in enumerate(outputs["label"]["data"])], expected, ["0", "1"])
    for path, status in (("/v2/health/live", 200), ("/v2/health/ready", 200), (f"/v2/models/{NAME}/ready", 200)):
        assert httpx.get(agent.url + path).status_code == status  # open, like /healthz and /readyz

    def error(body: Any, status: int, *fragments: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
        answer = httpx.post(agent.url + infer, json=body, headers=AUTH if headers is None else headers)
        assert answer.status_code == status, answer.text
        problem = answer.json()
        assert answer.headers["content-type"].startswith("application/problem+json")
        assert problem["error"] == problem["detail"] and problem["status"] == status  # V2's member + RFC 9457
        for fragment in fragments:
            assert fragment in problem["error"], problem
        return dict(problem)

    body = _v2_body(rows[:2], manifest)
    error(body, 401, "missing bearer token", headers={})
    error({**body, "inputs": body["inputs"][1:]}, 422, "input 'temperature_c' is missing")
    wrong_type = [{**t, "datatype": "BYTES"} if t["name"] == "rpm" else t for t in body["inputs"]]
    assert error({"inputs": wrong_type}, 422, "input 'rpm' is BYTES")["field"] == "rpm"
    short = [{**t, "shape": [3, 1]} if t["name"] == "site" else t for t in body["inputs"]]
    error({"inputs": short}, 422, "input 'site' has 3 rows")
    text = [{**t, "data": ["hot", 1.0]} if t["name"] == "rpm" else t for t in body["inputs"]]
    error({"inputs": text}, 422, "field 'rpm' must be a number")
    error({"inputs": [*body["inputs"], {**body["inputs"][0], "name": "colour"}]}, 422, "unknown input 'colour'")
    error({"inputs": []}, 400, "one tensor per feature")
    error({**body, "outputs": [{"name": "logits"}]}, 422, "unknown output 'logits'")
    metrics = agent.client.get("/metrics").text
    assert (
        'route="/v2/models/{name}/infer"' in metrics
        and 'edgeloop_prediction_errors_total{kind="schema_error"}' in metrics
    )


def test_mlflow_scoring_client_and_every_format(
    rf_bundle: TrainedBundle, tmp_path: Path, rows: list[dict[str, Any]], expected: list[dict[str, Any]]
) -> None:
    """MLflow's client sends no token: an agent without one (the same open/closed rule as /v1/predict)."""
    server = AgentServer(state_dir=tmp_path / "open", bundle=rf_bundle.bundle, public_key=rf_bundle.public_key)
    try:
        port = int(server.url.rsplit(":", 1)[1])
        client = ScoringServerClient("127.0.0.1", port)
        client.wait_server_ready(timeout=10)
        frame = pd.DataFrame(rows, columns=FEATURES)  # missing values become NaN, which MLflow's client writes
        answer = client.invoke(frame)
        assert answer.get_predictions(predictions_format="ndarray").tolist() == [e["label"] for e in expected]
        _same(_mlflow_pairs(answer), expected, ["0", "1"])
        assert (
            answer["model"] == NAME and answer["model_version"] == 1 and len(set(answer["prediction_ids"])) == len(rows)
        )

        columns = list(FEATURES)
        bodies = {
            "dataframe_split": {
                "dataframe_split": {"columns": columns, "data": [[r[c] for c in columns] for r in rows]}
            },
            "dataframe_records": {"dataframe_records": rows},
            "instances": {"instances": rows},
            "inputs": {"inputs": {c: [r[c] for r in rows] for c in columns}},
            "inputs-rows": {"inputs": [[r[c] for c in columns] for r in rows], "params": {}},
        }
        for name, body in bodies.items():
            got = httpx.post(f"{server.url}/invocations", json=body)
            assert got.status_code == 200, (name, got.text)
            _same(_mlflow_pairs(got.json()), expected, ["0", "1"])
        csv_text = frame.to_csv(index=False)
        got = httpx.post(f"{server.url}/invocations", content=csv_text, headers={"Content-Type": "text/csv"})
        assert got.status_code == 200, got.text
        assert got.json()["predictions"] == [e["label"] for e in expected]

        bad = httpx.post(f"{server.url}/invocations", json={"instances": rows, "inputs": rows})
        assert (
            bad.status_code == 422
            and bad.json()["error_code"] == "BAD_REQUEST"
            and "exactly one" in bad.json()["message"]
        )
        missing = httpx.post(f"{server.url}/invocations", json={"dataframe_records": [{"rpm": 1.0}]})
        assert missing.status_code == 422 and missing.json()["field"] == "temperature_c", missing.text
        assert (
            httpx.get(f"{server.url}/ping").status_code == 200 and httpx.get(f"{server.url}/health").status_code == 200
        )
        assert client.get_version().startswith("0.")
    finally:
        server.stop()


def test_invocations_needs_the_token_when_one_is_set(agent: AgentServer, rows: list[dict[str, Any]]) -> None:
    anonymous = httpx.post(f"{agent.url}/invocations", json={"dataframe_records": rows[:1]})
    assert anonymous.status_code == 401 and anonymous.json()["error_code"] == "UNAUTHENTICATED"
    assert anonymous.headers["www-authenticate"] == "Bearer"
    assert agent.client.post("/invocations", json={"dataframe_records": rows[:1]}).status_code == 200


def test_v2_and_invocations_count_in_the_telemetry_window_and_its_drift(
    tmp_path: Path, broker: Broker, rf_bundle: TrainedBundle
) -> None:
    probe = MqttProbe(broker.host, broker.port)
    server = AgentServer(
        state_dir=tmp_path / "state", bundle=rf_bundle.bundle, public_key=rf_bundle.public_key, device_id="gw-p",
        group="plant-p", mqtt_url=broker.url, telemetry_interval_s=600, token=TOKEN, max_batch=200,
    )  # fmt: skip
    try:
        manifest = manifest_of(rf_bundle.bundle)
        drifted = _rows(600, seed=12, drift=True)
        for start in range(0, 600, 200):
            chunk = drifted[start : start + 200]
            assert (
                server.client.post(f"/v2/models/{NAME}/infer", json=_v2_body(chunk[:100], manifest)).status_code == 200
            )
            assert server.client.post("/invocations", json={"dataframe_records": chunk[100:]}).status_code == 200
        assert server.agent.telemetry is not None
        server.agent.telemetry.flush()
        window = probe.wait_for("gw-p", "telemetry", lambda w: w["requests"] > 0)
        assert window["requests"] == 6 and window["records"] == 600
        bands = {name: score["band"] for name, score in window["drift"].items()}
        assert bands["temperature_c"] == "significant" and bands["firmware"] == "significant", bands
    finally:
        server.stop()
        probe.stop()
