"""Schemathesis fuzzes both OpenAPI specs (the agent serving a real bundle, the cloud with its real store and
broker): schema-valid and schema-violating requests to every operation, as an operator, never get a 5xx and
never crash the app. Bounded examples per operation so the module stays well under a minute."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.schemas import BaseSchema

from cloud_sync.api.app import create_app
from cloud_sync.api.context import CloudContext
from cloud_sync.ingest.publisher import MqttPublisher
from cloud_sync.rollouts.controller import Rollouts
from cloud_sync.signing_keys import KeyRotation
from cloud_sync.store.bundles import BundleRegistry
from contracts.signing import load_public_key
from edge_agent.app import Agent
from edge_agent.settings import AgentSettings
from tests.agent_helpers import record_of
from tests.cloud_support import make_store
from tests.conftest import Broker, TrainedBundle

EXAMPLES = int(os.environ.get("EDGELOOP_FUZZ_EXAMPLES", "20"))  # per operation and generation mode
TOKEN = "fuzz-token"


def _fuzz_operation(operation: Any, mode: GenerationMode, headers: dict[str, str], failures: list[str]) -> bool:
    """Sends up to EXAMPLES generated requests; a 5xx or an exception is appended to `failures`.
    False when the schema leaves nothing to generate in this mode (no parameters and no body to violate)."""

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        case.headers = {**(case.headers or {}), **headers}
        try:
            response = case.call()
        except Exception as error:  # the app raised instead of answering
            failures.append(f"{case.method} {case.formatted_path} ({mode}): {error!r}")
            return
        if response.status_code >= 500:
            failures.append(
                f"{case.method} {case.formatted_path} ({mode}) -> {response.status_code}: "
                f"{response.text[:200]} | body={case.body!r:.200}"
            )

    try:
        run()
    except Unsatisfiable:
        assert mode is GenerationMode.NEGATIVE, f"{operation.label}: no valid request can be generated"
        return False
    return True


def _fuzz(schema: BaseSchema, headers: dict[str, str]) -> list[str]:
    """Runs every operation of `schema` in both modes; returns the requests answered with a 5xx (or crashed)."""
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert operations, "the schema lists no operation"
    fuzzed = [
        _fuzz_operation(operation, mode, headers, failures)
        for operation in operations
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    ]
    assert sum(fuzzed) > len(operations), "hardly any operation could be fuzzed with invalid input"
    return failures


@pytest.fixture()
def agent(rf_bundle: TrainedBundle, tmp_path: Path) -> Iterator[Agent]:
    instance = Agent(
        AgentSettings(
            state_dir=tmp_path / "agent", bundle=rf_bundle.bundle, public_key=rf_bundle.public_key, token=TOKEN
        )
    )
    instance.load()
    yield instance
    instance.stop()


def test_agent_openapi_fuzz_never_gets_a_5xx(agent: Agent, rf_bundle: TrainedBundle) -> None:
    app = agent.create_app()
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    paths = set(schema.raw_schema["paths"])
    assert {"/v1/predict", "/v1/model", "/healthz", "/readyz"} <= paths
    failures = _fuzz(schema, {"Authorization": f"Bearer {TOKEN}"})
    assert failures == [], "\n".join(failures)
    # The agent still predicts after the fuzz.
    with TestClient(app) as client:
        answer = client.post(
            "/v1/predict", json=record_of(rf_bundle.bundle), headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert answer.status_code == 200, answer.text


def test_cloud_openapi_fuzz_never_gets_a_5xx(broker: Broker, tmp_path: Path, rf_bundle: TrainedBundle) -> None:
    with make_store("sqlite", tmp_path) as store:
        registry = BundleRegistry(tmp_path / "bundles", load_public_key(rf_bundle.public_key))
        publisher = MqttPublisher(broker.url, client_id="fuzz-test").start()
        try:
            rollouts = Rollouts(store, registry, publisher, base_url="http://127.0.0.1:9", keys_dir=rf_bundle.keys_dir)
            keys_dir = tmp_path / "keys"  # a copy: rotate writes new pairs into it
            shutil.copytree(rf_bundle.keys_dir, keys_dir)
            context = CloudContext(store, registry, rollouts, ["carol:look"], ["alice:act"])
            context.keys = KeyRotation(keys_dir, store, registry, publisher)
            schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(context))
            assert {"/v1/rollouts", "/v1/bundles", "/v1/fleet/stats"} <= set(schema.raw_schema["paths"])
            failures = _fuzz(schema, {"Authorization": "Bearer act"})
            assert failures == [], "\n".join(failures)
        finally:
            publisher.stop()
