"""REST hardening on the real processes (`python -m edge_agent`, `edgeloop cloud`): deeply nested JSON and
oversized bodies (declared or chunked) are a 4xx on both APIs and each keeps serving; and no secret (agent
token, MQTT passwords, viewer/operator tokens, a wrongly presented token) appears in their stdout/stderr,
logging at DEBUG, after successful and failed requests."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.agent_helpers import record_of
from tests.conftest import Broker, TrainedBundle
from tests.fault_helpers import AgentProcess, CloudProcess

AGENT_TOKEN = "agent-secret-7f3a9c"
AGENT_MQTT_PASSWORD = "agent-mqtt-pw-51e2"
CLOUD_MQTT_PASSWORD = "cloud-mqtt-pw-9d04"
VIEWER_SECRET = "viewer-secret-c81b"
OPERATOR_SECRET = "operator-secret-2ae6"
WRONG_TOKEN = "presented-wrong-token-66df"
SECRETS = [AGENT_TOKEN, AGENT_MQTT_PASSWORD, CLOUD_MQTT_PASSWORD, VIEWER_SECRET, OPERATOR_SECRET, WRONG_TOKEN]
MAX_BODY = 65536
NESTED = b"[" * 100_000 + b"]" * 100_000
NESTED_OBJECTS = b'{"a":' * 50_000 + b"1" + b"}" * 50_000


def _chunks(total: int) -> Iterator[bytes]:
    """A body without Content-Length (chunked transfer encoding), `total` bytes long."""
    sent = 0
    while sent < total:
        yield b" " * 8192
        sent += 8192


def _assert_rejected(response: httpx.Response, *statuses: int) -> None:
    assert response.status_code in statuses, (response.status_code, response.text[:300])


def test_nested_and_oversized_bodies_are_4xx_and_no_secret_is_logged(
    tmp_path: Path, broker: Broker, rf_bundle: TrainedBundle
) -> None:
    agent = AgentProcess(
        tmp_path / "agent", "dev-sec", "line-1", rf_bundle.bundle, rf_bundle.public_key, broker.url,
        token=AGENT_TOKEN, mqtt_username="dev-sec", mqtt_password=AGENT_MQTT_PASSWORD, max_body_bytes=MAX_BODY,
    )  # fmt: skip
    cloud = CloudProcess(
        tmp_path / "cloud", broker.url, rf_bundle.keys_dir,
        viewer_tokens=json.dumps([f"carol:{VIEWER_SECRET}"]), operator_tokens=json.dumps([f"alice:{OPERATOR_SECRET}"]),
        mqtt_username="cloud", mqtt_password=CLOUD_MQTT_PASSWORD, max_body_bytes=MAX_BODY,
    )  # fmt: skip
    agent.env["EDGELOOP_LOG_LEVEL"] = cloud.env["EDGELOOP_LOG_LEVEL"] = "DEBUG"
    record = record_of(rf_bundle.bundle)
    try:
        agent.start()
        cloud.start()
        auth = {"Authorization": f"Bearer {AGENT_TOKEN}", "Content-Type": "application/json"}
        with httpx.Client(base_url=agent.url, timeout=30) as http:
            assert http.post("/v1/predict", json=record, headers=auth).status_code == 200
            _assert_rejected(http.post("/v1/predict", json=record), 401)
            _assert_rejected(
                http.post("/v1/predict", json=record, headers={"Authorization": f"Bearer {WRONG_TOKEN}"}), 401
            )
            _assert_rejected(http.post("/v1/predict", content=NESTED, headers=auth), 400, 413, 422)
            _assert_rejected(http.post("/v1/predict", content=NESTED_OBJECTS, headers=auth), 400, 413, 422)
            _assert_rejected(http.post("/v1/feedback", content=NESTED, headers=auth), 400, 413, 422)
            _assert_rejected(http.post("/v1/predict", content=b"[" * (4 * MAX_BODY), headers=auth), 413)
            _assert_rejected(http.post("/v1/predict", content=_chunks(4 * MAX_BODY), headers=auth), 413)
            # Still serving.
            assert http.get("/healthz").status_code == 200
            assert http.post("/v1/predict", json=record, headers=auth).status_code == 200
        viewer = {"Authorization": f"Bearer {VIEWER_SECRET}"}
        operator = {"Authorization": f"Bearer {OPERATOR_SECRET}", "Content-Type": "application/json"}
        with httpx.Client(base_url=cloud.url, timeout=30) as http:
            assert http.get("/v1/devices", headers=viewer).status_code == 200
            _assert_rejected(http.get("/v1/devices"), 401)
            _assert_rejected(http.get("/v1/devices", headers={"Authorization": f"Bearer {WRONG_TOKEN}"}), 401)
            _assert_rejected(http.put("/v1/bundles", headers=viewer, content=b"x"), 403)
            _assert_rejected(http.post("/v1/rollouts", content=NESTED, headers=operator), 400, 413, 422)
            _assert_rejected(http.post("/v1/rollouts", content=NESTED_OBJECTS, headers=operator), 400, 413, 422)
            _assert_rejected(http.post("/v1/retrains", content=NESTED, headers=operator), 400, 413, 422)
            _assert_rejected(http.put("/v1/bundles", content=b"\0" * (4 * MAX_BODY), headers=operator), 413)
            _assert_rejected(http.put("/v1/bundles", content=_chunks(4 * MAX_BODY), headers=operator), 413)
            _assert_rejected(http.post("/v1/rollouts", content=_chunks(4 * MAX_BODY), headers=operator), 413)
            # Still serving, and a body under the cap is still read (a real but too big bundle would be refused).
            assert http.get("/healthz").status_code == 200
            assert http.get("/v1/devices", headers=viewer).status_code == 200
            _assert_rejected(http.put("/v1/bundles", content=b"not a tar", headers=operator), 400, 422)
    finally:
        agent.stop()
        cloud.stop()
    logs = {"agent": agent.log.read_text(errors="replace"), "cloud": cloud.log.read_text(errors="replace")}
    assert "ingest connected" in logs["cloud"], "the cloud's log is not where it should be: the check is empty"
    assert "unauthorized" in logs["agent"].lower() or logs["agent"], "the agent logged nothing: the check is empty"
    for name, text in logs.items():
        leaked = [secret for secret in SECRETS if secret in text]
        assert leaked == [], f"{name} logged secrets {leaked}"
