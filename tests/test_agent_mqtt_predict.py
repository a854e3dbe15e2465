"""Inference over MQTT (opt-in `mqtt_predict`): a real agent on a real Mosquitto, asked by a paho client as a
gateway's PLC or Node-RED would. The answer is /v1/predict's for the same records, on the request's MQTT 5
response topic with its correlation data (or on .../predict/response for an MQTT 3.1.1 client); bad input answers
a problem, never silence; every request counts in the telemetry window like a REST one."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import pytest

from contracts.errors import InputError
from tests.agent_helpers import AgentServer, MqttProbe, MqttRequester, record_of
from tests.conftest import Broker, TrainedBundle
from tests.test_agent_telemetry import records as _rows

DEVICE = "gw-mq"
TOKEN = "mqtt-predict-token"


@pytest.fixture()
def agent(tmp_path: Path, broker: Broker, rf_bundle: TrainedBundle) -> Iterator[AgentServer]:
    server = AgentServer(
        state_dir=tmp_path / "state", bundle=rf_bundle.bundle, public_key=rf_bundle.public_key, device_id=DEVICE,
        group="plant-mq", mqtt_url=broker.url, telemetry_interval_s=600, token=TOKEN, mqtt_predict=True,
    )  # fmt: skip
    yield server
    server.stop()


@pytest.fixture()
def requester(agent: AgentServer, broker: Broker, rf_bundle: TrainedBundle) -> Iterator[MqttRequester]:
    client = MqttRequester(broker.host, broker.port, DEVICE, user="plc-1")
    client.wait_ready(record_of(rf_bundle.bundle))
    yield client
    client.stop()


def _same(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert got["label"] == want["label"]
    assert got["probabilities"].keys() == want["probabilities"].keys()
    for name, value in want["probabilities"].items():
        assert math.isclose(got["probabilities"][name], value, rel_tol=0, abs_tol=1e-7)


def test_an_mqtt5_request_gets_the_v1_predict_answer_with_its_correlation_data(
    agent: AgentServer, requester: MqttRequester
) -> None:
    rows = _rows(40, seed=21)
    rest = agent.predict({"records": rows}).json()["predictions"]

    single = requester.ask(rows[0], b"\x00corr-1\xff")  # correlation data is bytes, echoed as sent
    assert single.topic == requester.response_topic
    assert single.content_type == "application/json"
    assert single.payload["model"] == "machine-failure" and single.payload["model_version"] == 1
    _same(single.payload, rest[0])

    batch = requester.ask({"records": rows}, b"corr-2")
    assert len(batch.payload["predictions"]) == len(rows)
    for got, want in zip(batch.payload["predictions"], rest, strict=True):
        _same(got, want)
    listed = requester.ask(rows[:3], b"corr-3")  # a plain list is a batch too, as on REST
    assert [p["label"] for p in listed.payload["predictions"]] == [p["label"] for p in rest[:3]]

    # The prediction ids are the service's: /v1/feedback takes them.
    feedback = agent.client.post(
        "/v1/feedback", json={"prediction_id": single.payload["prediction_id"], "label": rest[0]["label"]}
    )
    assert feedback.status_code == 200, feedback.text
    assert feedback.json()["correct"] is True


def test_bad_input_answers_a_problem_and_every_request_counts_in_telemetry(
    agent: AgentServer, broker: Broker, requester: MqttRequester, rf_bundle: TrainedBundle
) -> None:
    probe = MqttProbe(broker.host, broker.port)
    try:
        assert agent.agent.telemetry is not None
        agent.agent.telemetry.flush()  # the readiness requests go in a window of their own
        first = probe.wait_for(DEVICE, "telemetry", lambda w: w["requests"] > 0)["seq"]

        record = record_of(rf_bundle.bundle)
        unknown = requester.ask({**record, "colour": "red"}, b"bad-1")
        assert unknown.content_type == "application/problem+json"
        assert unknown.payload["status"] == 422 and unknown.payload["field"] == "colour"
        assert unknown.payload["type"] == "urn:edgeloop:error:SchemaError"
        assert "colour" in unknown.payload["detail"]
        malformed = requester.ask(b"{not json", b"bad-2")
        assert malformed.payload["status"] == 400 and malformed.payload["type"].endswith(":MalformedBody")
        empty = requester.ask(b"", b"bad-3")
        assert empty.payload["status"] == 400 and "empty" in empty.payload["detail"]
        wrong_type = requester.ask({**record, "temperature_c": "hot"}, b"bad-4")
        assert wrong_type.payload["status"] == 422 and wrong_type.payload["field"] == "temperature_c"
        for index in range(5):
            assert len(requester.ask(_rows(3, seed=index), f"ok-{index}".encode()).payload["predictions"]) == 3

        agent.agent.telemetry.flush()
        window = probe.wait_for(DEVICE, "telemetry", lambda w: w["seq"] > first)  # not a re-sent first window
        assert window["requests"] == 5 and window["records"] == 15
        assert window["errors"] == {"schema_error": 2, "malformed_body": 2}
        metrics = agent.client.get("/metrics").text
        assert 'edgeloop_prediction_errors_total{kind="schema_error"} 2.0' in metrics
    finally:
        probe.stop()


def test_an_mqtt311_client_reads_its_answer_on_the_default_response_topic(
    agent: AgentServer, broker: Broker, requester: MqttRequester, rf_bundle: TrainedBundle
) -> None:
    old = MqttRequester(broker.host, broker.port, DEVICE, protocol=mqtt.MQTTv311)
    try:
        body = orjson.dumps(record_of(rf_bundle.bundle))
        old.send(b'{"records": []}')
        old.send(body)
        answers = old.wait(2)
        assert {a.topic for a in answers} == {f"edgeloop/v1/devices/{DEVICE}/predict/response"}
        assert answers[0].payload["status"] == 422 and answers[0].payload["field"] == "records"
        assert answers[1].payload["label"] == agent.client.post("/v1/predict", content=body).json()["label"]
    finally:
        old.stop()


def test_it_is_opt_in_and_needs_a_broker(tmp_path: Path, broker: Broker, rf_bundle: TrainedBundle) -> None:
    with pytest.raises(InputError, match="mqtt_url is not set"):
        AgentServer(state_dir=tmp_path / "offline", bundle=rf_bundle.bundle, mqtt_predict=True)
    server = AgentServer(
        state_dir=tmp_path / "off",
        bundle=rf_bundle.bundle,
        public_key=rf_bundle.public_key,  # not the default key of $EDGELOOP_HOME a checkout's `make convert` left
        device_id="gw-off",
        mqtt_url=broker.url,
    )
    requester = MqttRequester(broker.host, broker.port, "gw-off")
    try:
        assert server.agent.sync is not None and server.agent.sync.connected.wait(10)
        with pytest.raises(AssertionError, match="no answer"):
            requester.ask(record_of(rf_bundle.bundle), b"nobody", timeout=1.5)
    finally:
        requester.stop()
        server.stop()
