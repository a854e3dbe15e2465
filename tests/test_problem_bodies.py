"""Both REST APIs (the edge agent and the cloud) answer errors with the same RFC 9457 problem body
(contracts/problem.py): a 401, a 404, a 413 and a 422 sent to each, plus the cloud's 403 and its OpenAPI."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from cloud_sync.api.app import create_app
from cloud_sync.api.context import CloudContext
from cloud_sync.ingest.publisher import MqttPublisher
from cloud_sync.rollouts.controller import Rollouts
from cloud_sync.store.bundles import BundleRegistry
from contracts.signing import load_public_key
from tests.agent_helpers import AgentServer, record_of
from tests.cloud_support import make_store
from tests.conftest import Broker, TrainedBundle

MAX_BODY = 4096
KEYS = {"type", "title", "status", "detail", "field"}


@pytest.fixture()
def cloud(broker: Broker, tmp_path: Path, rf_bundle: TrainedBundle) -> Iterator[TestClient]:
    with make_store("sqlite", tmp_path) as store:
        registry = BundleRegistry(tmp_path / "bundles", load_public_key(rf_bundle.public_key))
        publisher = MqttPublisher(broker.url, client_id="problem-test").start()
        rollouts = Rollouts(store, registry, publisher, base_url="http://127.0.0.1:9", keys_dir=rf_bundle.keys_dir)
        context = CloudContext(store, registry, rollouts, ["carol:look"], ["alice:act"], max_body_bytes=MAX_BODY)
        with TestClient(create_app(context)) as client:
            yield client
        publisher.stop()


@pytest.fixture()
def agent(rf_bundle: TrainedBundle, tmp_path: Path) -> Iterator[AgentServer]:
    server = AgentServer(
        state_dir=tmp_path / "agent", bundle=rf_bundle.bundle, public_key=rf_bundle.public_key,
        token="agent-token", max_body_bytes=MAX_BODY,
    )  # fmt: skip
    yield server
    server.stop()


def _problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json", response.headers
    body = response.json()
    assert set(body) == KEYS and body["status"] == status and body["title"] and body["detail"], body
    return body


def test_agent_and_cloud_answer_401_404_413_422_with_the_same_problem_body(
    cloud: TestClient, agent: AgentServer, rf_bundle: TrainedBundle
) -> None:
    viewer, operator = {"Authorization": "Bearer look"}, {"Authorization": "Bearer act"}
    auth = {"Authorization": "Bearer agent-token"}
    record = record_of(rf_bundle.bundle)
    with httpx.Client(base_url=agent.url) as http:
        on_agent = {
            401: http.post("/v1/predict", json=record),
            404: http.get("/v1/nothing-here", headers=auth),
            413: http.post("/v1/predict", content=b" " * (MAX_BODY + 1), headers=auth),
            422: http.post("/v1/predict", json={**record, "rpm": "fast"}, headers=auth),
        }
    on_cloud = {
        401: cloud.get("/v1/devices"),
        404: cloud.get("/v1/nothing-here", headers=viewer),
        413: cloud.put("/v1/bundles", content=b"\0" * (MAX_BODY + 1), headers=operator),
        422: cloud.post("/v1/rollouts", json={"model_name": "m", "model_version": "x", "group": "g"}, headers=operator),
    }
    for status in (401, 404, 413, 422):
        agent_body, cloud_body = _problem(on_agent[status], status), _problem(on_cloud[status], status)
        if status != 422:  # 422: the agent's schema check (SchemaError) vs FastAPI's request validation
            assert agent_body["type"] == cloud_body["type"], (agent_body, cloud_body)
    assert on_cloud[401].json()["type"] == "urn:edgeloop:error:Unauthorized"
    assert on_cloud[401].headers["www-authenticate"] == "Bearer"
    assert on_cloud[413].json()["type"] == "urn:edgeloop:error:PayloadTooLarge"
    assert on_cloud[404].json()["type"] == "about:blank"
    assert on_cloud[422].json()["field"] == "model_version" and on_agent[422].json()["field"] == "rpm"


def test_cloud_403_404_and_auth_on_dashboard_routes_are_problems_too(cloud: TestClient) -> None:
    viewer = {"Authorization": "Bearer look"}
    forbidden = _problem(cloud.post("/v1/alerts/1/acknowledge", headers=viewer), 403)
    assert forbidden["type"] == "urn:edgeloop:error:Forbidden" and "operator token" in forbidden["detail"]
    missing = _problem(cloud.get("/v1/rollouts/r-nope", headers=viewer), 404)
    assert missing["type"] == "urn:edgeloop:error:NotFoundError"
    unknown = _problem(cloud.get("/v1/dashboard/overview", params={"token": "wrong"}), 401)
    assert unknown["detail"] == "unknown token"
    assert cloud.get("/v1/dashboard/overview", params={"token": "look"}).status_code == 200
    _problem(cloud.get("/v1/fleet/stats", params={"since": "soon"}, headers=viewer), 422)


def test_cloud_openapi_documents_problems_and_response_models(cloud: TestClient) -> None:
    spec = cloud.get("/openapi.json").json()
    for path, method in (("/v1/rollouts", "post"), ("/v1/devices", "get"), ("/v1/alerts", "get")):
        responses = spec["paths"][path][method]["responses"]
        for status in ("401", "403", "404", "413", "422"):
            schema = responses[status]["content"]["application/problem+json"]["schema"]
            assert set(schema["properties"]) == KEYS, (path, status)
    schemas = spec["components"]["schemas"]
    ok = {path: spec["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
          for path in ("/v1/devices", "/v1/alerts", "/v1/rollouts", "/v1/rollouts/{rollout_id}")}  # fmt: skip
    assert ok["/v1/devices"]["items"]["$ref"].endswith("/Device")
    assert ok["/v1/alerts"]["items"]["$ref"].endswith("/Alert")
    assert ok["/v1/rollouts"]["items"]["$ref"].endswith("/Rollout")
    assert ok["/v1/rollouts/{rollout_id}"]["$ref"].endswith("/RolloutStatus")
    assert {"state", "mode", "canary"} <= set(schemas["Rollout"]["properties"])
