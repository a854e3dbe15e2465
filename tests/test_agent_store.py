"""The model store and offline start: verified installs, atomic pointer, kept versions, fallback, no network."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from contracts.errors import IntegrityError
from contracts.signing import generate_keypair, load_public_key
from edge_agent.app import Agent
from edge_agent.settings import AgentSettings
from edge_agent.store import ModelStore
from tests.agent_helpers import AgentServer, free_port, record_of
from tests.conftest import TrainedBundle


def _store(tmp_path: Path, bundle: TrainedBundle, keep: int = 3) -> ModelStore:
    return ModelStore(tmp_path / "state", load_public_key(bundle.public_key), keep)


def test_install_copies_a_verified_bundle_and_switches_the_pointer(
    tmp_path: Path, rf_bundle: TrainedBundle, logreg_bundle_v2: TrainedBundle
) -> None:
    store = _store(tmp_path, rf_bundle)
    first = store.install_from_dir(rf_bundle.bundle)
    assert first.path.parent == store.bundles_dir and first.signed
    assert store.install_from_dir(rf_bundle.bundle).path == first.path  # same bundle: no second copy
    store.activate(first)
    assert store.current_name() == first.path.name
    second = store.install_from_dir(logreg_bundle_v2.bundle)
    store.activate(second)
    assert store.pointer.read_text() == second.path.name + "\n"
    assert [b.manifest.version for b in store.candidates()] == [2, 1]
    assert sorted(p.name for p in store.state_dir.iterdir()) == ["bundles", "current", "tmp"]  # no temp leftovers
    assert list(store.tmp_dir.iterdir()) == []


def test_only_keep_versions_are_kept(tmp_path: Path, rf_bundle: TrainedBundle, logreg_bundle_v2: TrainedBundle) -> None:
    store = _store(tmp_path, rf_bundle, keep=1)
    store.activate(store.install_from_dir(rf_bundle.bundle))
    store.activate(store.install_from_dir(logreg_bundle_v2.bundle))
    assert [p.name for p in store.installed()] == [store.current_name()]


def test_tampered_or_foreign_bundles_never_enter_the_store(tmp_path: Path, rf_bundle: TrainedBundle) -> None:
    store = _store(tmp_path, rf_bundle)
    tampered = tmp_path / "tampered"
    shutil.copytree(rf_bundle.bundle, tampered)
    data = bytearray((tampered / "model.onnx").read_bytes())
    data[100] ^= 0x01
    (tampered / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="altered"):
        store.install_from_dir(tampered)
    _, other_public = generate_keypair(tmp_path / "other")
    foreign = ModelStore(tmp_path / "state2", load_public_key(other_public))
    with pytest.raises(IntegrityError, match="signature is invalid"):
        foreign.install_from_dir(rf_bundle.bundle)
    assert store.installed() == [] and foreign.installed() == []


@pytest.mark.device
def test_offline_start_serves_the_current_model_from_disk(tmp_path: Path, rf_bundle: TrainedBundle) -> None:
    first = AgentServer(state_dir=tmp_path / "state", bundle=rf_bundle.bundle, public_key=rf_bundle.public_key)
    first.stop()
    # No --bundle, and the broker is down: the agent serves from its store at once.
    dead_broker = f"mqtt://127.0.0.1:{free_port()}"
    again = AgentServer(state_dir=tmp_path / "state", public_key=rf_bundle.public_key, mqtt_url=dead_broker)
    try:
        assert again.client.get("/readyz").status_code == 200
        response = again.predict(record_of(rf_bundle.bundle))
        assert response.status_code == 200 and response.json()["model_version"] == 1
        assert again.client.get("/v1/model").json()["mqtt"] == "disconnected"
    finally:
        again.stop()


def test_a_damaged_current_bundle_falls_back_to_a_kept_version(
    tmp_path: Path, rf_bundle: TrainedBundle, logreg_bundle_v2: TrainedBundle
) -> None:
    settings = AgentSettings(state_dir=tmp_path / "state", public_key=rf_bundle.public_key)
    agent = Agent(settings.model_copy(update={"bundle": rf_bundle.bundle}))
    agent.load()
    agent.updater.install_local(logreg_bundle_v2.bundle)
    assert agent.service.current and agent.service.current.manifest.version == 2
    current = agent.store.bundles_dir / (agent.store.current_name() or "")
    agent.stop()
    (current / "model.onnx").write_bytes(b"garbage")
    again = Agent(settings)
    try:
        again.load()
        assert again.service.current and again.service.current.manifest.version == 1
        assert (again.store.current_name() or "").startswith("machine-failure-v1-")
    finally:
        again.stop()


def test_a_local_bundle_older_than_the_current_one_is_kept_but_not_served(
    tmp_path: Path, rf_bundle: TrainedBundle, logreg_bundle_v2: TrainedBundle
) -> None:
    base = AgentSettings(state_dir=tmp_path / "state", public_key=rf_bundle.public_key)
    newer = Agent(base.model_copy(update={"bundle": logreg_bundle_v2.bundle}))
    newer.load()
    newer.stop()
    older = Agent(base.model_copy(update={"bundle": rf_bundle.bundle}))  # e.g. a unit file that always says --bundle
    try:
        older.load()
        assert older.service.current and older.service.current.manifest.version == 2
        assert len(older.store.installed()) == 2
    finally:
        older.stop()


def test_a_bad_bundle_with_nothing_to_serve_is_an_error(tmp_path: Path, rf_bundle: TrainedBundle) -> None:
    unsigned = tmp_path / "unsigned"
    shutil.copytree(rf_bundle.bundle, unsigned)
    (unsigned / "manifest.sig").unlink()
    agent = Agent(AgentSettings(state_dir=tmp_path / "state", public_key=rf_bundle.public_key, bundle=unsigned))
    try:
        with pytest.raises(IntegrityError, match="unsigned"):
            agent.load()
    finally:
        agent.stop()


def test_one_agent_per_state_dir(tmp_path: Path, rf_bundle: TrainedBundle) -> None:
    settings = AgentSettings(state_dir=tmp_path / "state", public_key=rf_bundle.public_key)
    first = Agent(settings)
    try:
        with pytest.raises(Exception, match="another agent"):
            Agent(settings)
    finally:
        first.stop()


def test_event_sequence_numbers_survive_restarts(tmp_path: Path, rf_bundle: TrainedBundle) -> None:
    settings = AgentSettings(state_dir=tmp_path / "state", public_key=rf_bundle.public_key)
    seqs = []
    for _ in range(2):
        agent = Agent(settings)
        seqs.append(agent.updater.reporter.publish_event("started").seq)
        agent.stop()
    assert seqs == [1, 2]
    assert (tmp_path / "state" / "events.seq").read_text().strip() == "2"


def test_settings_describe_every_field() -> None:
    rows = AgentSettings.describe()
    assert len(rows) == len(AgentSettings.model_fields)
    assert all(env.startswith("EDGELOOP_AGENT_") and doc for env, _, doc in rows)
    defaults = {env: default for env, default, _ in rows}
    assert defaults["EDGELOOP_AGENT_PORT"] == "8080" and defaults["EDGELOOP_AGENT_STATE_DIR"].endswith("agent")
