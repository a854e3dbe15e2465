"""Shadow through the signed desired state and the shadow canary rollout, with real agents on the test broker.

The agent verifies `DesiredState.shadow` like the main bundle and runs it in shadow while the champion answers;
the cloud's rollout controller (mode `shadow`) compares the challenger's shadow accuracy with the champion's on
the same feedback from the canary's windows and promotes it, or rolls the shadow back, with the accuracies in
the audit log."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from contracts.manifest import SIGNATURE_FILE
from contracts.messages import ShadowBundle
from tests.agent_helpers import AgentServer, BundleServer, MqttProbe, desired_state, manifest_of
from tests.cloud_support import wait_until
from tests.conftest import Broker, TrainedBundle
from tests.loop_helpers import CloudServer, start_ingest
from tests.test_agent_telemetry import records

OPS = {"Authorization": "Bearer act"}
VIEW = {"Authorization": "Bearer look"}


def _shadow_of(agent: AgentServer) -> int | None:
    shadow = agent.agent.service.shadow
    return None if shadow is None else shadow.manifest.version


def test_desired_state_shadow_is_verified_run_and_cleared(
    broker: Broker, tmp_path: Path, rf_bundle: TrainedBundle, logreg_bundle_v2: TrainedBundle
) -> None:
    files = BundleServer(tmp_path / "www")
    probe = MqttProbe(broker.host, broker.port)
    agent = AgentServer(
        state_dir=tmp_path / "agent", bundle=rf_bundle.bundle, public_key=rf_bundle.public_key, token="t",
        device_id="gw-s", group="g-shadow", mqtt_url=broker.url, telemetry_interval_s=3600,
    )  # fmt: skip
    try:
        v1_url = files.add(rf_bundle.bundle, "v1")
        v2_url = files.add(logreg_bundle_v2.bundle, "v2")
        v2 = logreg_bundle_v2.bundle
        champion = desired_state(rf_bundle.bundle, v1_url)
        # A shadow whose signature does not match: refused before any download, the champion keeps serving.
        forged = champion.model_copy(
            update={
                "shadow": ShadowBundle(
                    manifest=manifest_of(v2).model_dump(mode="json"),
                    signature=(rf_bundle.bundle / SIGNATURE_FILE).read_text(),
                    model_url=v2_url,
                ),
                "rollout_id": "forged",
            }
        )
        probe.desire_device("gw-s", forged)
        event = probe.wait_for("gw-s", "events", lambda e: e["kind"] == "rejected")
        assert event["details"]["shadow"] is True and event["model_version"] == 2
        assert "shadow" in event["reason"] and _shadow_of(agent) is None and agent.version() == 1
        # The real challenger: verified, downloaded, golden samples, then run in shadow beside v1.
        good = champion.model_copy(
            update={
                "shadow": ShadowBundle(
                    manifest=manifest_of(v2).model_dump(mode="json"),
                    signature=(v2 / SIGNATURE_FILE).read_text(),
                    model_url=v2_url,
                ),
                "rollout_id": "shadow-1",
            }
        )
        probe.desire_device("gw-s", good)
        wait_until(lambda: _shadow_of(agent) == 2, 15, "shadow v2 running")
        started = probe.wait_for("gw-s", "events", lambda e: e["details"].get("shadow") == "started")
        assert started["model_version"] == 2
        answer = agent.predict({"records": records(20, seed=3)})
        assert answer.status_code == 200
        assert agent.agent.status()["shadow"] == "machine-failure/2"
        # Clearing the shadow in the desired state stops it; v1 still serves.
        probe.desire_device("gw-s", champion.model_copy(update={"rollout_id": "no-shadow"}))
        wait_until(lambda: _shadow_of(agent) is None, 15, "shadow stopped")
        assert agent.version() == 1
        probe.wait_for("gw-s", "events", lambda e: e["details"].get("shadow") == "stopped")
    finally:
        agent.stop()
        probe.stop()
        files.stop()


@pytest.mark.parametrize("winner", ["challenger", "champion"])
def test_shadow_canary_promotes_or_rolls_back_on_measured_accuracy(
    broker: Broker, tmp_path: Path, rf_bundle: TrainedBundle, logreg_bundle_v2: TrainedBundle, winner: str
) -> None:
    cloud = CloudServer(broker, tmp_path, rf_bundle, [rf_bundle.bundle, logreg_bundle_v2.bundle])
    ingest = start_ingest(cloud.store, broker)
    group = f"line-{winner}"
    agents = [
        AgentServer(
            state_dir=tmp_path / name,
            bundle=rf_bundle.bundle,
            public_key=rf_bundle.public_key,
            token="t",
            device_id=f"{name}-{winner}",
            group=group,
            mqtt_url=broker.url,
            telemetry_interval_s=3600,
        )
        for name in ("gw-1", "gw-2")
    ]
    canary, other = agents
    try:
        devices = lambda: httpx.get(f"{cloud.url}/v1/devices", params={"group": group}, headers=VIEW).json()  # noqa: E731
        wait_until(lambda: sorted(d["model_version"] for d in devices()) == [1, 1], 15, "both devices on v1")
        body = {"model_name": "machine-failure", "model_version": 2, "group": group,
                "canary": canary.settings.device_id, "soak_minutes": 0, "mode": "shadow"}  # fmt: skip
        started = httpx.post(f"{cloud.url}/v1/rollouts", json=body, headers=OPS)
        assert started.status_code == 201, started.text
        rollout = started.json()
        assert rollout["mode"] == "shadow" and rollout["previous_version"] == 1
        cloud.rollouts.tick()  # soaking from now: the canary keeps serving v1
        wait_until(lambda: _shadow_of(canary) == 2, 15, "canary runs v2 in shadow")
        assert canary.version() == 1 and _shadow_of(other) is None
        # Feedback on the canary: the true label is the challenger's (it wins) or the champion's.
        answer = canary.predict({"records": records(120, seed=8)})
        assert answer.status_code == 200
        disagreements, labels = 0, []
        for prediction in answer.json()["predictions"]:
            remembered = canary.agent.service.feedback.get(prediction["prediction_id"])
            assert remembered is not None and remembered.shadow_label is not None
            disagreements += remembered.shadow_label != prediction["label"]
            actual = remembered.shadow_label if winner == "challenger" else prediction["label"]
            labels.append({"prediction_id": prediction["prediction_id"], "label": actual})
        sent = canary.client.post("/v1/feedback", json={"feedback": labels})
        assert sent.status_code == 200, sent.text
        assert canary.agent.telemetry is not None
        canary.agent.telemetry.flush()
        from cloud_sync.rollouts.checks import shadow_comparison

        wait_until(
            lambda: shadow_comparison(cloud.store, cloud.rollouts.get(rollout["id"]), since=0, now=2e9).labels >= 120,
            15,
            "canary window with shadow feedback stored",
        )
        cloud.rollouts.tick()
        status = cloud.rollouts.status(rollout["id"])
        audit = httpx.get(f"{cloud.url}/v1/audit", headers=VIEW).json()
        entries = audit["entries"] if isinstance(audit, dict) else audit
        if winner == "challenger":
            assert status["state"] == "promoted", status
            assert "at least as good" in status["reason"]
            canary.wait_version(2)
            other.wait_version(2)
            wait_until(lambda: _shadow_of(canary) is None, 15, "shadow stopped after promotion")
            step = next(e for e in entries if e["action"] == "promote")
            assert step["details"]["challenger_accuracy"] == 1.0
            assert step["details"]["champion_accuracy"] < 1.0 or disagreements == 0
        else:
            assert disagreements > 0, "the two models never disagree on these records: the test cannot decide"
            assert status["state"] == "rolled_back", status
            assert "worse" in status["reason"]
            wait_until(lambda: _shadow_of(canary) is None, 15, "shadow stopped after rollback")
            assert canary.version() == 1 and other.version() == 1
            step = next(e for e in entries if e["action"] == "rollback")
            assert step["details"]["champion_accuracy"] == 1.0
            assert step["details"]["challenger_accuracy"] < 1.0
        assert step["details"]["labels"] == 120 and step["details"]["mode"] == "shadow"
    finally:
        for agent in agents:
            agent.stop()
        ingest.stop()
        cloud.stop()


def test_a_store_from_before_shadow_canaries_gets_the_mode_column(tmp_path: Path) -> None:
    import sqlalchemy as sa

    from cloud_sync.store.db import Store, rollouts

    url = f"sqlite:///{tmp_path / 'old.db'}"
    old = sa.MetaData()
    sa.Table(
        "rollouts", old, *[sa.Column(c.name, c.type, primary_key=c.primary_key) for c in rollouts.c if c.name != "mode"]
    )
    engine = sa.create_engine(url)
    old.create_all(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO rollouts (id, group_name, model_name, model_version, canary, soak_s, state, actor, created_at)"
            " VALUES ('r-old', 'g', 'm', 2, '[]', 0, 'promoted', 'ops', 1.0)"
        )
    engine.dispose()
    store = Store(url).create()
    try:
        with store.engine.connect() as conn:
            assert conn.execute(sa.select(rollouts.c.mode)).scalar_one() == "serving"
        store.create()  # idempotent
    finally:
        store.dispose()
