"""A/B split on the device through the signed desired state, with real agents, a real broker and real bundles.

`DesiredState.ab` carries a challenger (verified like a shadow) with a `fraction` and a key field; each record's
key (the field, else the `X-Request-Key` header) is hashed with BLAKE2b into [0, 1) and below the fraction the
challenger answers. Answers say which version and arm answered; feedback counts for that arm; telemetry windows
carry per-arm counts; `edgeloop deploy --ab-fraction` publishes it and `rollout status` shows per-arm accuracy.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloud_sync.rollouts.checks import Limits
from cloud_sync.rollouts.sequential import SequentialRule
from cloud_sync.store.audit import entries
from contracts.ab import arm_of, bucket, key_text
from contracts.bundle import Bundle, load_bundle
from contracts.errors import SchemaError
from contracts.manifest import MODEL_FILE, SIGNATURE_FILE
from contracts.messages import ABSplit, DesiredState
from contracts.runtime import OnnxModel
from contracts.signing import load_public_key
from edge_agent.ab_split import KeyFields
from edge_agent.outbox import Outbox
from edge_agent.service import InferenceService
from edge_agent.settings import AgentSettings
from edge_agent.telemetry import TelemetryReporter
from tests.agent_helpers import AgentServer, BundleServer, MqttProbe, desired_state, manifest_of
from tests.cli_helpers import CliResult, run_edgeloop
from tests.cloud_support import wait_until
from tests.conftest import Broker, TrainedBundle
from tests.loop_helpers import CloudServer, start_ingest
from tests.test_agent_telemetry import records

VIEW = {"Authorization": "Bearer look"}


def _split(bundle: Path, url: str, fraction: float, key_field: str | None, signature: str | None = None) -> ABSplit:
    return ABSplit(
        manifest=manifest_of(bundle).model_dump(mode="json"),
        signature=signature if signature is not None else (bundle / SIGNATURE_FILE).read_text(),
        model_url=url,
        fraction=fraction,
        key_field=key_field,
    )


def _model(trained: TrainedBundle) -> OnnxModel:
    return OnnxModel.load(load_bundle(trained.bundle, load_public_key(trained.public_key)), intra_op_threads=1)


def _loaded(trained: TrainedBundle) -> tuple[OnnxModel, Bundle]:
    bundle = load_bundle(trained.bundle, load_public_key(trained.public_key))
    return OnnxModel.load(bundle, intra_op_threads=1), bundle


def _counted_service(tmp_path: Path, champion: TrainedBundle, key_fields: KeyFields | None = None) -> InferenceService:
    """A service whose champion traffic is counted by a real TelemetryReporter (read with `.counter.snapshot()`)."""
    reporter = TelemetryReporter(Outbox(tmp_path / "outbox.db"), "gw", "g", "test", tmp_path, interval=3600)
    service = InferenceService(telemetry=reporter, key_fields=key_fields)
    service.swap(*_loaded(champion))
    return service


def _probabilities(model: OnnxModel, record: dict[str, Any]) -> dict[str, float]:
    row = model.predict_records([record]).probabilities.tolist()[0]
    return dict(zip([str(c) for c in model.manifest.classes], row, strict=True))


def _ab_of(agent: AgentServer) -> int | None:
    ab = agent.agent.status()["ab"]  # through /v1/model for an agent of the device profile
    return None if ab is None else int(ab["model"].rsplit("/", 1)[1])


def _binomial_bounds(n: int, p: float, sigmas: float = 5.0) -> tuple[float, float]:
    spread = sigmas * (n * p * (1 - p)) ** 0.5
    return n * p - spread, n * p + spread


def test_the_arm_of_a_key_is_stable_and_the_fraction_is_respected() -> None:
    keys = [f"machine-{i}" for i in range(2000)]
    for fraction in (0.05, 0.2, 0.5):
        chosen = sum(arm_of(key, fraction) == "challenger" for key in keys)
        low, high = _binomial_bounds(len(keys), fraction)
        assert low <= chosen <= high, (fraction, chosen)
    # Raising the fraction only moves keys to the challenger, never back.
    at_10 = {key for key in keys if arm_of(key, 0.1) == "challenger"}
    at_20 = {key for key in keys if arm_of(key, 0.2) == "challenger"}
    assert at_10 < at_20
    assert all(arm_of(key, 0.0) == "champion" and arm_of(key, 1.0) == "challenger" for key in keys[:200])
    assert arm_of(None, 1.0) == "champion" and key_text("") is None and key_text(7) == "7"
    # A whole-number float is the same key as the integer (an id sent as 7 or 7.0 gets the same arm); other
    # floats and strings are unchanged, and so is the hash of a string.
    assert key_text(7.0) == key_text(7) == "7" and key_text(-0.0) == "0" and key_text(1e3) == "1000"
    assert key_text(1.5) == "1.5" and key_text("7.0") == "7.0" and key_text(True) == "true"
    assert all(arm_of(key_text(float(i)), 0.5) == arm_of(key_text(i), 0.5) for i in range(500))
    assert bucket("machine-42") == 0.9947993748072477 and bucket("7") == 0.903565871251404
    assert all(0.0 <= bucket(key) < 1.0 for key in keys)
    # Process-independent: another interpreter with another hash seed puts every key in the same place.
    script = "from contracts.ab import bucket; print(repr([bucket(f'machine-{i}') for i in range(50)]))"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    other = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert other.stdout.strip() == repr([bucket(f"machine-{i}") for i in range(50)])


@pytest.mark.device
def test_desired_state_ab_splits_traffic_by_key_counts_each_arm_and_stops(
    broker: Broker, tmp_path: Path, rf_bundle: TrainedBundle, logreg_bundle_v2: TrainedBundle
) -> None:
    files = BundleServer(tmp_path / "www")
    probe = MqttProbe(broker.host, broker.port)
    agent = AgentServer(
        state_dir=tmp_path / "agent", bundle=rf_bundle.bundle, public_key=rf_bundle.public_key, token="t",
        device_id="gw-ab", group="g-ab", mqtt_url=broker.url, telemetry_interval_s=3600,
    )  # fmt: skip
    v1, v2 = rf_bundle.bundle, logreg_bundle_v2.bundle
    champion_model, challenger_model = _model(rf_bundle), _model(logreg_bundle_v2)
    try:
        v1_url, v2_url = files.add(v1, "v1"), files.add(v2, "v2")
        champion = desired_state(v1, v1_url)
        # A challenger whose signature is not its own: refused before any download, no split.
        forged = _split(v2, v2_url, 0.5, "machine_id", signature=(v1 / SIGNATURE_FILE).read_text())
        probe.desire_device("gw-ab", champion.model_copy(update={"ab": forged, "rollout_id": "forged"}))
        event = probe.wait_for("gw-ab", "events", lambda e: e["kind"] == "rejected")
        assert event["details"]["ab"] is True and event["model_version"] == 2 and "A/B" in event["reason"]
        assert _ab_of(agent) is None and agent.version() == 1
        # Signed manifest but a tampered model.onnx (sha256 differs): refused after the download.
        tampered_url = files.add(v2, "v2-tampered", (v2 / MODEL_FILE).read_bytes()[:-16] + b"x" * 16)
        tampered = _split(v2, tampered_url, 0.5, "machine_id")
        probe.desire_device("gw-ab", champion.model_copy(update={"ab": tampered, "rollout_id": "tampered"}))
        first = event["reason"]
        event = probe.wait_for(
            "gw-ab", "events", lambda e: e["kind"] == "rejected" and e["details"].get("ab") and e["reason"] != first
        )
        assert "sha256" in event["reason"] and _ab_of(agent) is None
        # The real challenger on half of the keys, keyed by the `machine_id` field (not a model input).
        good = champion.model_copy(update={"ab": _split(v2, v2_url, 0.5, "machine_id"), "rollout_id": "ab-1"})
        probe.desire_device("gw-ab", good)
        wait_until(lambda: _ab_of(agent) == 2, 15, "A/B challenger v2 loaded")
        started = probe.wait_for("gw-ab", "events", lambda e: e["details"].get("ab") == "started")
        assert started["model_version"] == 2 and started["details"]["fraction"] == 0.5
        assert agent.agent.status()["ab"] == {"model": "machine-failure/2", "fraction": 0.5, "key_field": "machine_id"}

        # Header key: the same key always gets the same arm, and the answer is that model's own prediction.
        record = records(1, seed=4)[0]
        keys = {
            arm: next(f"k-{i}" for i in range(99) if arm_of(f"k-{i}", 0.5) == arm) for arm in ("champion", "challenger")
        }
        for arm, key in keys.items():
            model, other = (challenger_model, champion_model)
            if arm == "champion":
                model, other = other, model
            for _ in range(5):
                answer = agent.client.post("/v1/predict", json=record, headers={"X-Request-Key": key})
                assert answer.status_code == 200, answer.text
                body = answer.json()
                assert body["arm"] == arm and body["model_version"] == model.manifest.version
                assert body["probabilities"] == _probabilities(model, record)
                assert body["probabilities"] != _probabilities(other, record)
        # No key at all: the champion answers.
        plain = agent.predict(record).json()
        assert plain["arm"] == "champion" and plain["model_version"] == 1

        # A batch keyed by a record field mixes arms; answers keep the order of the records.
        batch = records(200, seed=11)
        for index, row in enumerate(batch):
            row["machine_id"] = f"m-{index % 60}"
        answer = agent.predict({"records": batch})
        assert answer.status_code == 200, answer.text
        predictions = answer.json()["predictions"]
        expected = [arm_of(row["machine_id"], 0.5) for row in batch]
        assert [p["arm"] for p in predictions] == expected and len(set(expected)) == 2
        features = [{k: v for k, v in row.items() if k != "machine_id"} for row in batch]
        reference = {
            "champion": champion_model.predict_records(features).probabilities.tolist(),
            "challenger": challenger_model.predict_records(features).probabilities.tolist(),
        }
        for index, prediction in enumerate(predictions):
            assert prediction["model_version"] == (2 if prediction["arm"] == "challenger" else 1)
            assert list(prediction["probabilities"].values()) == reference[prediction["arm"]][index]

        # Feedback counts for the arm that answered: every challenger answer is right, every champion one wrong.
        classes = [str(c) for c in champion_model.manifest.classes]
        feedback, want = [], {"champion": 0, "challenger": 0}
        for prediction in predictions:
            arm = prediction["arm"]
            wrong = next(c for c in classes if c != str(prediction["label"]))
            label = prediction["label"] if arm == "challenger" else type(prediction["label"])(wrong)
            feedback.append({"prediction_id": prediction["prediction_id"], "label": label})
            want[arm] += 1
        sent = agent.client.post("/v1/feedback", json={"feedback": feedback})
        assert sent.status_code == 200 and sent.json()["accepted"] == 200, sent.text
        results = sent.json()["results"]
        assert {(r["arm"], r["model_version"], r["correct"]) for r in results} == {
            ("challenger", 2, True),
            ("champion", 1, False),
        }
        explained = agent.client.post("/v1/explain", json={**record, "machine_id": "m-1"})
        assert explained.status_code == 200 and explained.json()["model_version"] == 1, explained.text
        first_challenger = predictions[expected.index("challenger")]["prediction_id"]
        lineage = agent.client.get(f"/v1/predictions/{first_challenger}/lineage")
        assert lineage.json()["arm"] == "challenger" and lineage.json()["model"]["version"] == 2

        # The telemetry window over the real broker carries per-arm counts and accuracy.
        assert agent.agent.telemetry is not None
        agent.agent.telemetry.flush()
        window = probe.wait_for(
            "gw-ab", "telemetry", lambda w: w.get("arms", {}).get("challenger", {}).get("confusion")
        )
        arms = window["arms"]
        served = {arm: sum(a == arm for a in expected) for arm in ("champion", "challenger")}
        assert window["ab_model_version"] == 2 and window["model_version"] == 1
        assert arms["challenger"]["records"] == served["challenger"] + 5
        assert arms["champion"]["records"] == served["champion"] + 5 + 1
        assert window["records"] == arms["champion"]["records"]  # the window's own counts are the champion's
        # Every request counts in the window, also the 5 that only the challenger answered; per arm, the
        # requests that had a record on it (the mixed batch counts on both) and its model's latency.
        assert window["requests"] == 5 + 5 + 1 + 1 and sum(window["latency_counts"]) == window["requests"]
        assert (arms["challenger"]["requests"], arms["champion"]["requests"]) == (5 + 1, 5 + 1 + 1)
        assert sum(arms["challenger"]["latency_counts"]) == 6 and arms["challenger"]["latency_sum"] > 0
        assert arms["challenger"]["errors"] == 0 == arms["champion"]["errors"]
        for arm, correct in (("challenger", True), ("champion", False)):
            confusion = arms[arm]["confusion"]
            total = sum(sum(row.values()) for row in confusion.values())
            right = sum(row.get(actual, 0) for actual, row in confusion.items())
            assert total == want[arm] and right == (total if correct else 0), (arm, confusion)
        assert sum(sum(row.values()) for row in window["confusion"].values()) == want["champion"]

        # A desired state without `ab` stops the split: the champion answers everything, no arm field.
        probe.desire_device("gw-ab", champion.model_copy(update={"rollout_id": "no-ab"}))
        wait_until(lambda: _ab_of(agent) is None, 15, "A/B stopped")
        probe.wait_for("gw-ab", "events", lambda e: e["details"].get("ab") == "stopped")
        after = agent.client.post("/v1/predict", json=record, headers={"X-Request-Key": keys["challenger"]}).json()
        assert "arm" not in after and after["model_version"] == 1 and agent.version() == 1
        # Clients keep sending the split's key field after it stopped (a rollback must not become an outage):
        # accepted and dropped, on /v1/predict and /v1/explain; any other unknown field is still refused.
        keyed = agent.client.post("/v1/predict", json={**record, "machine_id": "m-1"})
        assert keyed.status_code == 200 and keyed.json()["probabilities"] == after["probabilities"], keyed.text
        assert agent.predict({"records": batch}).status_code == 200
        assert agent.client.post("/v1/explain", json={**record, "machine_id": "m-1"}).status_code == 200
        unknown = agent.client.post("/v1/predict", json={**record, "serial": "x"})
        assert unknown.status_code == 422 and unknown.json()["field"] == "serial"
    finally:
        agent.stop()
        probe.stop()
        files.stop()


@pytest.mark.device
def test_edgeloop_deploy_ab_fraction_through_the_cloud_and_rollout_status_per_arm(
    broker: Broker,
    tmp_path: Path,
    rf_bundle: TrainedBundle,
    logreg_bundle_v2: TrainedBundle,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cloud = CloudServer(broker, tmp_path, rf_bundle, [rf_bundle.bundle])
    ingest = start_ingest(cloud.store, broker)
    group = "line-ab"
    agents = [
        AgentServer(
            state_dir=tmp_path / name,
            bundle=rf_bundle.bundle,
            public_key=rf_bundle.public_key,
            token="t",
            device_id=name,
            group=group,
            mqtt_url=broker.url,
            telemetry_interval_s=3600,
        )
        for name in ("gw-a1", "gw-a2")
    ]
    canary, other = agents

    def cli(*args: str) -> CliResult:
        monkeypatch.setenv("EDGELOOP_CLOUD_URL", cloud.url)
        monkeypatch.setenv("EDGELOOP_CLOUD_TOKEN", "act")
        monkeypatch.setenv("COLUMNS", "160")
        return run_edgeloop(list(args), monkeypatch, capsys, tmp_path / "home")

    try:
        devices = lambda: httpx.get(f"{cloud.url}/v1/devices", params={"group": group}, headers=VIEW).json()  # noqa: E731
        wait_until(lambda: sorted(d["model_version"] for d in devices()) == [1, 1], 15, "both devices on v1")
        refused = cli("deploy", str(logreg_bundle_v2.bundle), "--group", group, "--ab-key", "machine_id")
        assert refused.exit_code != 0 and "--ab-fraction" in refused.stderr
        done = cli("deploy", str(logreg_bundle_v2.bundle), "--group", group, "--canary", "gw-a1",
                   "--ab-fraction", "0.5", "--ab-key", "machine_id")  # fmt: skip
        assert done.exit_code == 0, done.stderr
        rollout = cloud.rollouts.latest(group)
        assert rollout["mode"] == "ab" and rollout["previous_version"] == 1
        wait_until(lambda: _ab_of(canary) == 2, 15, "canary splits with v2")
        assert canary.version() == 1 and _ab_of(other) is None
        ab = canary.agent.status()["ab"]
        assert ab is not None and (ab["fraction"], ab["key_field"]) == (0.5, "machine_id")

        batch = records(120, seed=21)
        for index, row in enumerate(batch):
            row["machine_id"] = f"press-{index}"
        predictions = canary.predict({"records": batch}).json()["predictions"]
        labels = [{"prediction_id": p["prediction_id"], "label": p["label"]} for p in predictions]
        assert canary.client.post("/v1/feedback", json={"feedback": labels}).status_code == 200
        assert canary.agent.telemetry is not None
        canary.agent.telemetry.flush()
        served = {arm: sum(p["arm"] == arm for p in predictions) for arm in ("champion", "challenger")}

        def arms() -> dict[str, Any]:
            return dict(cloud.rollouts.status(rollout["id"]).get("ab") or {})

        wait_until(lambda: arms().get("challenger", {}).get("labels") == served["challenger"], 15, "A/B window stored")
        cloud.rollouts.tick()
        cloud.rollouts.tick()
        status = httpx.get(f"{cloud.url}/v1/rollouts/{rollout['id']}", headers=VIEW).json()
        assert status["state"] == "soaking", status  # promotion of an A/B test stays manual
        for arm, version in (("champion", 1), ("challenger", 2)):
            part = status["ab"][arm]
            assert part["model_version"] == version and part["records"] == served[arm]
            assert part["labels"] == served[arm] and part["accuracy"] == 1.0
        decision = status["ab"]["decision"]  # the sequential test: too few labels for a verdict
        assert (decision["verdict"], decision["challenger_labels"]) == ("not yet known", served["challenger"])
        shown = cli("rollout", "status", rollout["id"])
        assert shown.exit_code == 0 and "A/B on the canary" in shown.stdout and "challenger" in shown.stdout
        assert "A/B decision: not yet known" in shown.stdout and "100 labels per arm needed" in shown.stdout

        # Rolling back stops the split on the canary; the champion keeps serving.
        back = cli("rollout", "rollback", rollout["id"], "--reason", "enough data")
        assert back.exit_code == 0, back.stderr
        wait_until(lambda: _ab_of(canary) is None, 15, "split stopped after rollback")
        assert canary.version() == 1 and other.version() == 1
    finally:
        for agent in agents:
            agent.stop()
        ingest.stop()
        cloud.stop()


def test_a_worse_challenger_on_a_real_agent_is_shown_worse_and_rolled_back_when_auto_decide_is_on(
    broker: Broker,
    tmp_path: Path,
    rf_bundle: TrainedBundle,
    logreg_bundle_v2: TrainedBundle,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A real agent splits 600 keyed records; feedback confirms every champion answer and 60 % of the
    challenger's. The sequential test, fed by the agent's real window through the broker and the ingest, says
    "challenger worse" with its confidence in `edgeloop rollout status`; with ab_auto_decide on, the next tick
    rolls the canary back (the verdict in the audit log) and the agent stops the split."""
    limits = Limits(ab=SequentialRule(alpha=0.05, min_labels=100, auto_decide=True))
    cloud = CloudServer(broker, tmp_path, rf_bundle, [rf_bundle.bundle, logreg_bundle_v2.bundle], limits=limits)
    ingest = start_ingest(cloud.store, broker)
    group = "line-ab-auto"
    canary = AgentServer(
        state_dir=tmp_path / "gw-a1",
        bundle=rf_bundle.bundle,
        public_key=rf_bundle.public_key,
        token="t",
        device_id="gw-a1",
        group=group,
        mqtt_url=broker.url,
        telemetry_interval_s=3600,
    )

    def cli(*args: str) -> CliResult:
        monkeypatch.setenv("EDGELOOP_CLOUD_URL", cloud.url)
        monkeypatch.setenv("EDGELOOP_CLOUD_TOKEN", "act")
        monkeypatch.setenv("COLUMNS", "200")
        return run_edgeloop(list(args), monkeypatch, capsys, tmp_path / "home")

    try:
        devices = lambda: httpx.get(f"{cloud.url}/v1/devices", params={"group": group}, headers=VIEW).json()  # noqa: E731
        wait_until(lambda: [d["model_version"] for d in devices()] == [1], 15, "the device on v1")
        name = manifest_of(rf_bundle.bundle).name
        body = {"model_name": name, "model_version": 2, "group": group, "canary": "gw-a1", "mode": "ab",
                "ab_fraction": 0.5, "ab_key": "machine_id"}  # fmt: skip
        created = httpx.post(f"{cloud.url}/v1/rollouts", json=body, headers={"Authorization": "Bearer act"})
        assert created.status_code == 201, created.text
        rollout_id = created.json()["id"]
        wait_until(lambda: _ab_of(canary) == 2, 15, "canary splits with v2")

        batch = records(600, seed=33)
        for index, row in enumerate(batch):
            row["machine_id"] = f"press-{index}"
        predictions = canary.predict({"records": batch}).json()["predictions"]
        classes = [str(c) for c in manifest_of(rf_bundle.bundle).classes]
        other = {label: next(c for c in classes if c != label) for label in classes}
        labels, seen = [], 0
        for p in predictions:
            label = p["label"]
            if p["arm"] == "challenger":
                seen += 1
                label = label if seen % 5 in (1, 2, 3) else other[str(label)]  # 3 of every 5 answers confirmed
            labels.append({"prediction_id": p["prediction_id"], "label": label})
        assert canary.client.post("/v1/feedback", json={"feedback": labels}).status_code == 200
        assert canary.agent.telemetry is not None
        canary.agent.telemetry.flush()
        served = {arm: sum(p["arm"] == arm for p in predictions) for arm in ("champion", "challenger")}
        assert min(served.values()) >= 200, served

        def decision() -> dict[str, Any]:
            return dict((cloud.rollouts.status(rollout_id).get("ab") or {}).get("decision") or {})

        wait_until(lambda: decision().get("challenger_labels") == served["challenger"], 15, "A/B window stored")
        assert decision()["verdict"] == "worse" and decision()["confidence"] >= 0.95
        shown = cli("rollout", "status", rollout_id)
        assert shown.exit_code == 0, shown.stderr
        assert "A/B decision: challenger worse: accuracy 0.6" in shown.stdout and "confidence" in shown.stdout
        assert "the controller acts on it" in shown.stdout

        cloud.rollouts.tick()
        done = cloud.rollouts.status(rollout_id)
        assert done["state"] == "rolled_back" and "(ab_auto_decide)" in done["reason"], done["reason"]
        entry = [e for e in entries(cloud.store) if e["action"] == "rollback"][-1]
        assert entry["actor"] == "controller" and entry["details"]["ab"]["decision"]["verdict"] == "worse"
        wait_until(lambda: _ab_of(canary) is None, 15, "split stopped after the automatic rollback")
        assert canary.version() == 1
    finally:
        canary.stop()
        ingest.stop()
        cloud.stop()


def test_old_desired_states_stay_valid_and_the_split_is_validated() -> None:
    old = DesiredState.model_validate(
        {"manifest": {}, "signature": "s", "model_url": "http://x/m.onnx", "issued_at": "2026-01-01T00:00:00Z"}
    )
    assert old.ab is None and old.shadow is None
    with pytest.raises(ValueError):
        ABSplit(manifest={}, signature="s", model_url="u", fraction=1.5)


def test_a_request_answered_only_by_the_challenger_counts_in_the_window(
    tmp_path: Path, rf_bundle: TrainedBundle, logreg_bundle_v2: TrainedBundle
) -> None:
    service = _counted_service(tmp_path, rf_bundle)
    service.set_ab(*_loaded(logreg_bundle_v2), 1.0, None)
    for _ in range(10):
        answers = service.predict(records(3, seed=1), "any-key").predictions
        assert [a["arm"] for a in answers] == ["challenger"] * 3
    assert service.current is not None and service.current.counter is not None
    counts = service.current.counter.snapshot()
    assert counts.requests == 10 and sum(counts.latency_counts) == 10 and counts.latency_sum > 0
    assert counts.records == 0 and counts.predicted == {}  # the window's own counts are the champion arm's
    challenger = counts.arms["challenger"]
    assert (challenger.requests, challenger.records, challenger.errors) == (10, 30, 0)
    assert sum(challenger.latency_counts) == 10 and "champion" not in counts.arms


def test_challenger_failures_are_counted_per_arm_and_the_champion_answers(
    tmp_path: Path, rf_bundle: TrainedBundle, logreg_bundle_v2: TrainedBundle
) -> None:
    # A challenger stricter than the champion: its manifest refuses a missing temperature, the champion's imputes
    # it, so those records fail on the challenger (a real SchemaError) and the champion answers them.
    model, bundle = _loaded(logreg_bundle_v2)
    inputs = [s.model_copy(update={"nullable": s.name != "temperature_c"}) for s in model.manifest.inputs]
    strict = OnnxModel(model.manifest.model_copy(update={"inputs": inputs}), model.session)
    service = _counted_service(tmp_path, rf_bundle)
    service.set_ab(strict, bundle, 1.0, None)
    good, bad = records(2, seed=3), [{**row, "temperature_c": None} for row in records(2, seed=5)]
    for _ in range(3):
        assert [a["arm"] for a in service.predict(bad, "k").predictions] == ["champion"] * 2
    assert [a["arm"] for a in service.predict(good, "k").predictions] == ["challenger"] * 2
    assert service.ab_failures == 3 and service.current is not None and service.current.counter is not None
    counts = service.current.counter.snapshot()
    assert counts.requests == 4 and counts.records == 6  # the champion counted the 3 requests it answered
    challenger, champion = counts.arms["challenger"], counts.arms["champion"]
    assert (challenger.requests, challenger.errors, challenger.records, challenger.error_rate) == (4, 3, 2, 0.75)
    assert (champion.requests, champion.errors, champion.records) == (3, 0, 6)


@pytest.mark.device
def test_key_fields_are_accepted_after_the_split_stops_and_by_the_setting(
    tmp_path: Path, rf_bundle: TrainedBundle, logreg_bundle_v2: TrainedBundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = {**records(1, seed=4)[0], "machine_id": "m-1"}
    service = _counted_service(tmp_path / "a", rf_bundle)
    with pytest.raises(SchemaError, match="machine_id"):  # no split yet, no setting: an unknown field
        service.predict([record])
    service.set_ab(*_loaded(logreg_bundle_v2), 0.5, "machine_id")
    during = service.predict([record]).predictions[0]
    service.set_ab(None)
    after = service.predict([record]).predictions[0]
    assert "arm" in during and "arm" not in after and service.key_fields.fields == {"machine_id"}
    # The setting accepts a key field with no split at all (e.g. after a restart once the split has ended);
    # a key field that is a model input is never dropped.
    configured = _counted_service(tmp_path / "b", rf_bundle, KeyFields(["machine_id", "site"]))
    plain = {k: v for k, v in record.items() if k != "machine_id"}
    assert configured.predict([record]).predictions[0]["probabilities"] == _probabilities(_model(rf_bundle), plain)
    assert configured.key_fields.strip([record], frozenset(plain)) == [plain]
    # Env (JSON) and config file, like every setting.
    monkeypatch.setenv("EDGELOOP_AGENT_REQUEST_KEY_FIELDS", '["machine_id", "line"]')
    assert AgentSettings().request_key_fields == ["machine_id", "line"]
    monkeypatch.delenv("EDGELOOP_AGENT_REQUEST_KEY_FIELDS")
    config = tmp_path / "edgeloop.toml"
    config.write_text('[agent]\nrequest_key_fields = ["press"]\n')
    monkeypatch.setenv("EDGELOOP_CONFIG", str(config))
    assert AgentSettings().request_key_fields == ["press"]
    monkeypatch.delenv("EDGELOOP_CONFIG")
    agent = AgentServer(
        state_dir=tmp_path / "agent", bundle=rf_bundle.bundle, public_key=rf_bundle.public_key,
        request_key_fields=["machine_id"],
    )  # fmt: skip
    try:
        assert agent.client.post("/v1/predict", json=record).status_code == 200
        assert agent.client.post("/v1/explain", json=record).status_code == 200
    finally:
        agent.stop()
