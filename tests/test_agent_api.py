"""The agent's REST API on a real uvicorn: predictions, every bad input -> 4xx naming the field, auth, metrics."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from contracts.errors import SchemaError
from contracts.runtime import OnnxModel
from edge_agent.service import InferenceService
from tests.agent_helpers import AgentServer, manifest_of, record_of
from tests.conftest import TrainedBundle

TOKEN = "test-token-123"
MAX_BATCH = 50
MAX_BODY = 32768


@pytest.fixture(scope="module")
def agent(rf_bundle: TrainedBundle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentServer]:
    server = AgentServer(
        state_dir=tmp_path_factory.mktemp("agent-api"),
        bundle=rf_bundle.bundle,
        public_key=rf_bundle.public_key,
        token=TOKEN,
        max_batch=MAX_BATCH,
        max_body_bytes=MAX_BODY,
    )
    yield server
    server.stop()


@pytest.fixture()
def record(rf_bundle: TrainedBundle) -> dict[str, Any]:
    return record_of(rf_bundle.bundle)


@pytest.mark.device
def test_single_record_matches_the_golden_sample(agent: AgentServer, rf_bundle: TrainedBundle) -> None:
    manifest = manifest_of(rf_bundle.bundle)
    golden = manifest.golden_samples[0]
    response = agent.predict(dict(golden.inputs))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "machine-failure" and body["model_version"] == 1
    assert re.fullmatch(r"[0-9a-f]{32}", body["prediction_id"])
    assert body["label"] == golden.label
    assert list(body["probabilities"]) == [str(c) for c in manifest.classes]
    for got, expected in zip(body["probabilities"].values(), golden.probabilities, strict=True):
        assert math.isclose(got, expected, abs_tol=manifest.golden_tolerance)


@pytest.mark.parametrize("envelope", ["list", "records"])
@pytest.mark.device
def test_batch_answers_one_prediction_per_record_in_order(
    agent: AgentServer, rf_bundle: TrainedBundle, envelope: str
) -> None:
    manifest = manifest_of(rf_bundle.bundle)
    records = [dict(sample.inputs) for sample in manifest.golden_samples]
    payload: Any = records if envelope == "list" else {"records": records}
    response = agent.predict(payload)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert [p["label"] for p in predictions] == [s.label for s in manifest.golden_samples]
    assert len({p["prediction_id"] for p in predictions}) == len(records)


@pytest.mark.device
def test_a_batch_bigger_than_the_inline_limit_runs_in_the_thread_pool(agent: AgentServer, record: dict) -> None:
    response = agent.predict([record] * MAX_BATCH)
    assert response.status_code == 200
    assert len(response.json()["predictions"]) == MAX_BATCH


@pytest.mark.device
def test_unknown_category_and_missing_values_are_accepted(agent: AgentServer, record: dict) -> None:
    unseen = {**record, "machine_type": "turbine", "site": "oslo"}
    assert agent.predict(unseen).status_code == 200
    nulls = {name: None for name in record}
    response = agent.predict(nulls)
    assert response.status_code == 200, response.text


def _bad_cases(record: dict[str, Any]) -> list[tuple[str, Any, int, str | None]]:
    """(case, payload: JSON value or raw bytes, expected status, field named in the answer)."""
    without = {k: v for k, v in record.items() if k != "temperature_c"}
    return [
        ("missing field", without, 422, "temperature_c"),
        ("missing field in a batch", [record, without], 422, "temperature_c"),
        ("extra field", {**record, "colour": "red"}, 422, "colour"),
        ("string for a number", {**record, "rpm": "fast"}, 422, "rpm"),
        ("bool for a number", {**record, "rpm": True}, 422, "rpm"),
        ("number for a category", {**record, "site": 3}, 422, "site"),
        ("object as a value", {**record, "power_kw": {"value": 1}}, 422, "power_kw"),
        ("list as a value", {**record, "machine_type": ["press"]}, 422, "machine_type"),
        ("NaN token", _raw(record, "pressure_bar", "NaN"), 400, None),
        ("Infinity token", _raw(record, "pressure_bar", "-Infinity"), 400, None),
        ("number overflowing a double", _raw(record, "pressure_bar", "1e400"), 400, None),
        ("empty batch", [], 422, "records"),
        ("empty records envelope", {"records": []}, 422, "records"),
        ("records not a list", {"records": record}, 422, "records"),
        ("unknown key next to records", {"records": [record], "mode": "fast"}, 422, "mode"),
        ("batch over max_batch", [record] * (MAX_BATCH + 1), 413, None),
        ("body over max_body_bytes", {**record, "site": "x" * MAX_BODY}, 413, None),
        ("malformed JSON", b'{"rpm": 12', 400, None),
        ("empty body", b"", 400, None),
        ("a JSON string", "press", 422, None),
        ("records that are not objects", [1, 2], 422, None),
    ]


def _raw(record: dict[str, Any], field: str, token: str) -> bytes:
    import orjson

    return orjson.dumps({**record, field: 0.0}).replace(f'"{field}":0.0'.encode(), f'"{field}":{token}'.encode())


@pytest.mark.device
def test_every_bad_input_gets_a_4xx_naming_the_field(agent: AgentServer, record: dict[str, Any]) -> None:
    for case, payload, status, field in _bad_cases(record):
        if isinstance(payload, bytes):
            response = agent.client.post("/v1/predict", content=payload, headers={"Content-Type": "application/json"})
        else:
            response = agent.predict(payload)
        assert response.status_code == status, f"{case}: {response.status_code} {response.text}"
        body = response.json()
        assert body["detail"] and "\n" not in body["detail"], case
        if field is not None:
            assert body["field"] == field, f"{case}: {body}"
            assert field in body["detail"], f"{case}: {body}"
    assert agent.predict(record).status_code == 200  # still serving


@pytest.mark.device
def test_nan_and_infinity_tokens_say_how_to_send_a_missing_value(agent: AgentServer, record: dict) -> None:
    response = agent.client.post("/v1/predict", content=_raw(record, "rpm", "NaN"))
    assert response.status_code == 400
    assert "NaN" in response.json()["detail"] and "null" in response.json()["detail"]


@pytest.mark.device
def test_a_chunked_body_over_the_limit_is_cut_off_while_reading(agent: AgentServer) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"site": "'
        for _ in range(MAX_BODY // 1024 + 2):
            yield b"x" * 1024
        yield b'"}'

    response = agent.client.post("/v1/predict", content=chunks())  # no Content-Length: chunked encoding
    assert response.status_code == 413
    assert "max_body_bytes" in response.json()["detail"]


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}, {"Authorization": "Bearer"}],
    ids=["missing", "wrong", "not-bearer", "empty"],
)
@pytest.mark.device
def test_v1_needs_the_bearer_token(agent: AgentServer, record: dict, headers: dict[str, str]) -> None:
    with httpx.Client(base_url=agent.url, headers=headers) as anonymous:
        for response in (anonymous.post("/v1/predict", json=record), anonymous.get("/v1/model")):
            assert response.status_code == 401
            assert response.headers["www-authenticate"] == "Bearer"
            assert "token" in response.json()["detail"]


@pytest.mark.device
def test_health_readiness_metrics_and_docs_are_open(agent: AgentServer) -> None:
    with httpx.Client(base_url=agent.url) as anonymous:
        assert anonymous.get("/healthz").json() == {"status": "ok"}
        assert anonymous.get("/readyz").json() == {"ready": True, "model": "machine-failure", "model_version": 1}
        assert anonymous.get("/metrics").status_code == 200
        assert anonymous.get("/docs").status_code == 200
        schema = anonymous.get("/openapi.json").json()
    record = schema["components"]["schemas"]["Record"]
    assert record["properties"]["rpm"]["type"] == ["number", "null"]
    assert "examples" in record["properties"]["machine_type"]
    assert schema["paths"]["/v1/predict"]["post"]["security"] == [{"bearer": []}]


@pytest.mark.device
def test_model_summary(agent: AgentServer, rf_bundle: TrainedBundle) -> None:
    body = agent.client.get("/v1/model").json()
    manifest = manifest_of(rf_bundle.bundle)
    assert body["ready"] is True
    assert body["model"]["version"] == 1 and body["model"]["sha256"] == manifest.onnx.sha256
    assert [spec["name"] for spec in body["model"]["inputs"]] == manifest.feature_names
    assert body["mqtt"] is None and body["stored_bundles"] == [body["model"]["bundle"]]


@pytest.mark.device
def test_metrics_use_conventional_names_and_count_errors(agent: AgentServer, record: dict) -> None:
    agent.predict(record)
    agent.predict({**record, "rpm": "x"})
    text = httpx.get(f"{agent.url}/metrics").text
    assert 'http_request_duration_seconds_bucket{le="0.001",model="machine-failure",route="/v1/predict"}' in text
    assert 'edgeloop_requests_total{code="200",route="/v1/predict"}' in text
    assert 'edgeloop_prediction_errors_total{kind="schema_error"}' in text
    sha = manifest_of(Path(agent.settings.bundle or "")).onnx.sha256
    assert f'edgeloop_model_info{{name="machine-failure",sha256="{sha}",version="1"}} 1.0' in text
    assert 'edgeloop_predictions_total{model="machine-failure",version="1"}' in text
    assert "process_resident_memory_bytes" in text
    assert not re.search(r'edgeloop_requests_total\{code="5\d\d"', text), "bad input must never cause a 5xx"


@pytest.mark.device
def test_an_agent_without_a_model_is_alive_but_not_ready(tmp_path: Path, record: dict) -> None:
    server = AgentServer(state_dir=tmp_path / "empty")
    try:
        assert server.client.get("/healthz").status_code == 200
        ready = server.client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["ready"] is False
        response = server.predict(record)
        assert response.status_code == 503 and response.json()["type"] == "urn:edgeloop:error:ModelNotReady"
    finally:
        server.stop()


def test_null_where_the_schema_forbids_it_names_the_field(agent: AgentServer, record: dict[str, Any]) -> None:
    loaded = agent.agent.service.current
    assert loaded is not None
    inputs = [s.model_copy(update={"nullable": False}) if s.name == "rpm" else s for s in loaded.manifest.inputs]
    strict = InferenceService()
    strict.swap(OnnxModel(loaded.manifest.model_copy(update={"inputs": inputs}), loaded.model.session), loaded.bundle)
    with pytest.raises(SchemaError) as refused:
        strict.predict([{**record, "rpm": None}])
    assert refused.value.field == "rpm" and refused.value.http_status == 422
    assert strict.predict([{**record, "power_kw": None}]).predictions[0]["label"] in (0, 1)


@pytest.mark.device
def test_every_error_is_an_rfc9457_problem_documented_in_openapi(agent: AgentServer, record: dict[str, Any]) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=agent.url) as client:
        answers = {
            "400 malformed": client.post("/v1/predict", content=b"{nope", headers=auth),
            "401 no token": client.post("/v1/predict", json=record),
            "404 unknown route": client.get("/v1/nothing-here", headers=auth),
            "404 unknown prediction": client.get("/v1/predictions/0123/lineage", headers=auth),
            "405 wrong method": client.get("/v1/predict", headers=auth),
            "413 batch": client.post("/v1/predict", json=[record] * (MAX_BATCH + 1), headers=auth),
            "422 schema": client.post("/v1/predict", json={**record, "rpm": "fast"}, headers=auth),
        }
    for case, response in answers.items():
        assert response.status_code == int(case[:3]), f"{case}: {response.status_code} {response.text}"
        assert response.headers["content-type"] == "application/problem+json", case
        body = response.json()
        assert set(body) == {"type", "title", "status", "detail", "field"}, f"{case}: {body}"
        assert body["status"] == response.status_code and body["title"] and body["detail"], case
    assert answers["401 no token"].json()["type"] == "urn:edgeloop:error:Unauthorized"
    assert answers["404 unknown route"].json()["type"] == "about:blank"
    assert answers["404 unknown prediction"].json()["type"] == "urn:edgeloop:error:NotFoundError"
    assert answers["422 schema"].json()["field"] == "rpm"
    spec = agent.client.get("/openapi.json").json()
    assert set(spec["components"]["schemas"]["Problem"]["properties"]) == {"type", "title", "status", "detail", "field"}
    for path, status in (("/v1/predict", "422"), ("/v1/feedback", "404"), ("/v1/explain", "413")):
        content = spec["paths"][path]["post"]["responses"][status]["content"]
        assert content == {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}, path
    for path in ("/v1/model", "/v1/predictions/{prediction_id}/lineage"):
        assert "application/problem+json" in spec["paths"][path]["get"]["responses"]["401"]["content"], path
