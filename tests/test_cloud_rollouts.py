"""Staged rollouts against a real broker, with devices simulated by small MQTT clients that behave like the
agent on the wire (device-level desired state wins, older versions only with a signed rollback)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest

from cloud_sync.fleet.simulator import SimDevice, make_window
from cloud_sync.rollouts import overrides
from cloud_sync.rollouts.controller import Rollouts
from cloud_sync.rollouts.model import RolloutRequest
from cloud_sync.rollouts.sequential import SequentialRule
from cloud_sync.store.audit import entries
from contracts.errors import ConflictError, ServiceUnavailableError
from contracts.manifest import Manifest, canonical_bytes
from contracts.signing import load_public_key, verify_bytes
from contracts.topics import device_topic
from tests.cloud_support import arm_counts, wait_until
from tests.conftest import Broker, TrainedBundle
from tests.rollout_helpers import Cloud, running_cloud

NAME = "machine-failure"


@pytest.fixture()
def cloud(broker: Broker, tmp_path: Path, rf_bundle: TrainedBundle, logreg_bundle_v2: TrainedBundle) -> Iterator[Cloud]:
    with running_cloud(broker, tmp_path, rf_bundle, logreg_bundle_v2) as running:
        yield running


def _versions(devices: list[SimDevice]) -> list[int | None]:
    return [d.model[1] if d.model else None for d in devices]


def test_canary_then_group_promotion(cloud: Cloud) -> None:
    devices = cloud.devices(4)
    first = cloud.rollouts.deploy(RolloutRequest(NAME, 1, "line-1", canary="0", soak_s=0), actor="alice")
    assert first["state"] == "promoted"  # no canary: straight to the group
    for device in devices:
        assert device.wait_for(1)
    wait_until(lambda: cloud.rollouts.status(first["id"])["on_target"] == 4, what="group on v1")

    rollout = cloud.rollouts.deploy(RolloutRequest(NAME, 2, "line-1", canary="25%", soak_s=1.5), actor="alice")
    assert rollout["canary"] == ["dev-1"] and rollout["previous_version"] == 1
    assert devices[0].wait_for(2)
    time.sleep(0.3)
    assert _versions(devices) == [2, 1, 1, 1]  # only the canary moved
    soaking = cloud.run_until(rollout["id"], ("soaking",))
    assert soaking["soak_started_at"] is not None
    assert _versions(devices) == [2, 1, 1, 1]  # still soaking
    done = cloud.run_until(rollout["id"], ("promoted", "rolled_back"))
    assert done["state"] == "promoted", done["reason"]
    assert "soak of 1.5s passed" in done["reason"]
    for device in devices:
        assert device.wait_for(2)
    wait_until(lambda: all("device" not in d._desired for d in devices), what="device overrides cleared")
    assert all(d.history == [(NAME, 1), (NAME, 2)] for d in devices)
    actions = [(e["actor"], e["action"]) for e in entries(cloud.store)]
    assert ("alice", "deploy") in actions and ("controller", "promote") in actions
    assert ("device:dev-1", "device accepted") in actions
    # Deploying the older v1 again is refused up front (devices would refuse it as a replay), pointing at rollback.
    with pytest.raises(ConflictError, match=r"runs machine-failure/2: machine-failure/1 is older.*rollout rollback"):
        cloud.rollouts.deploy(RolloutRequest(NAME, 1, "line-1", canary="25%", soak_s=0), actor="alice")
    assert cloud.rollouts.latest("line-1")["id"] == rollout["id"]  # no rollout was created


def test_a_rejected_canary_is_rolled_back_automatically(cloud: Cloud) -> None:
    def health_check(manifest: dict) -> str | None:
        return "golden sample 3: label 1 != 0" if manifest["version"] == 2 else None

    devices = cloud.devices(3, reject=health_check)
    cloud.rollouts.deploy(RolloutRequest(NAME, 1, "line-1", canary="0", soak_s=0))
    for device in devices:
        assert device.wait_for(1)
    rollout = cloud.rollouts.deploy(RolloutRequest(NAME, 2, "line-1", canary="dev-2", soak_s=60))
    done = cloud.run_until(rollout["id"], ("rolled_back", "promoted"))
    assert done["state"] == "rolled_back"
    assert done["reason"] == "canary device dev-2 rejected machine-failure/2: golden sample 3: label 1 != 0"
    time.sleep(0.3)
    assert _versions(devices) == [1, 1, 1]
    audit = [(e["actor"], e["action"], e["reason"]) for e in entries(cloud.store)]
    assert ("device:dev-2", "device rejected", "golden sample 3: label 1 != 0") in audit
    assert ("controller", "rollback", done["reason"]) in audit


@pytest.mark.parametrize("failure", ["errors", "accuracy"])
def test_bad_canary_telemetry_rolls_back_with_a_signed_rollback_manifest(
    cloud: Cloud, failure: str, rf_bundle: TrainedBundle
) -> None:
    devices = cloud.devices(3)
    cloud.rollouts.deploy(RolloutRequest(NAME, 1, "line-1", canary="0", soak_s=0))
    for device in devices:
        assert device.wait_for(1)
    rollout = cloud.rollouts.deploy(RolloutRequest(NAME, 2, "line-1", canary="dev-1", soak_s=60))
    assert devices[0].wait_for(2)
    cloud.run_until(rollout["id"], ("soaking",))
    now = time.time()
    for seq, device in enumerate(devices, start=1):
        canary = device is devices[0]
        manifest = cloud.v2 if canary else cloud.v1
        errors = 30 if canary and failure == "errors" else 0
        accuracy = 0.6 if canary and failure == "accuracy" else 0.9
        window = make_window(
            device.device_id, "line-1", seq, now, manifest, requests=200, errors=errors, accuracy=accuracy, feedback=100
        )
        device.publish_window(window)
    done = cloud.run_until(rollout["id"], ("rolled_back", "promoted"))
    assert done["state"] == "rolled_back"
    expected = "canary error rate 0.150 is above 0.05" if failure == "errors" else "canary accuracy 0.600 is 0.300"
    assert done["reason"].startswith(expected), done["reason"]
    # The canary went back to v1: the agent accepts an older version only with a signed rollback manifest.
    assert devices[0].wait_for(1)
    assert devices[0].history == [(NAME, 1), (NAME, 2), (NAME, 1)]
    desired = devices[0]._desired["device"]
    assert desired.manifest["rollback"] is True and desired.manifest["version"] == 1
    manifest = Manifest.model_validate(desired.manifest)
    verify_bytes(canonical_bytes(manifest), desired.signature.encode(), load_public_key(rf_bundle.public_key))
    assert _versions(devices) == [1, 1, 1]


@pytest.mark.parametrize("challenger", ["errors", "accuracy", "good", "few labels"])
def test_an_ab_challenger_is_guarded_by_comparing_its_arm_with_the_champions(cloud: Cloud, challenger: str) -> None:
    """In mode ab the canary's windows carry the champion's version (the challenger is in `arms`), so the
    controller compares the arms: a failing or less accurate challenger is rolled back, a good one soaks on."""
    devices = cloud.devices(2)
    cloud.rollouts.deploy(RolloutRequest(NAME, 1, "line-1", canary="0", soak_s=0))
    for device in devices:
        assert device.wait_for(1)
    rollout = cloud.rollouts.deploy(
        RolloutRequest(NAME, 2, "line-1", canary="dev-1", soak_s=60, mode="ab", ab_fraction=0.5)
    )
    assert cloud.run_until(rollout["id"], ("soaking",))["state"] == "soaking"
    classes = [str(c) for c in cloud.v1.classes]
    errors = {"errors": 20, "good": 1}.get(challenger, 0)
    accuracy = {"accuracy": 0.6, "few labels": 0.2}.get(challenger, 0.92)
    labels = 20 if challenger == "few labels" else 100
    time.sleep(0.1)
    now = time.time()  # the windows end after the rollout started
    for seq, part in enumerate(
        [(arm_counts(classes, 60, 0, 60, 0.9), arm_counts(classes, 40, errors // 2, labels // 2, accuracy))] * 2,
        start=1,
    ):
        window = make_window("dev-1", "line-1", seq, now - 0.05 + seq / 100, cloud.v1, requests=100)
        arms = {"champion": part[0], "challenger": part[1]}
        devices[0].publish_window(window.model_copy(update={"arms": arms, "ab_model_version": 2}))
    cloud.ingest.wait_idle(2)
    wait_until(lambda: cloud.rollouts.status(rollout["id"])["ab"]["champion"]["requests"] == 120, what="windows")
    if challenger in ("good", "few labels"):
        for _ in range(3):
            cloud.rollouts.tick()
        status = cloud.rollouts.status(rollout["id"])
        assert status["state"] == "soaking", status["reason"]  # ab_auto_decide is off: the operator decides
        part = status["ab"]["challenger"]
        assert (part["requests"], part["errors"], part["labels"]) == (80, errors // 2 * 2, labels // 2 * 2)
        # Polling without devices reads the last tick's report, not the windows.
        assert cloud.rollouts.status(rollout["id"], per_device=False)["ab"] == status["ab"]
        return
    done = cloud.run_until(rollout["id"], ("rolled_back", "promoted"))
    assert done["state"] == "rolled_back"
    expected = {
        "errors": "A/B challenger machine-failure/2 failed in 20 of 80 requests (error rate 0.250, above 0.05)",
        "accuracy": (
            "A/B challenger machine-failure/2 accuracy 0.600 on 100 labels is 0.300 below champion "
            "machine-failure/1's 0.900 on 120 labels (limit 0.05)"
        ),
    }[challenger]
    assert done["reason"].startswith(expected), done["reason"]
    rollback = [e for e in entries(cloud.store) if e["action"] == "rollback"][-1]
    assert rollback["actor"] == "controller" and rollback["details"]["ab"]["challenger"]["requests"] == 80
    # The canary gets the champion without the split.
    wait_until(lambda: devices[0]._desired["device"].rollout_id == rollout["id"], what="desired state")
    wait_until(lambda: devices[0]._desired["device"].ab is None, what="split stopped")
    assert _versions(devices) == [1, 1]


def test_a_rollout_without_canary_is_promoted_by_whichever_replica_gets_there_first(cloud: Cloud) -> None:
    """Two replicas on one store: the leader's tick may see a canary-less rollout between the other replica's
    insert and its publish. It promotes it (never a soak with nothing to watch); the other's promote then
    changes nothing, and the audit holds one promote."""
    devices = cloud.devices(2)
    leader = Rollouts(
        cloud.store,
        cloud.registry,
        cloud.rollouts.publisher,
        base_url="http://127.0.0.1:1",
        keys_dir=cloud.rollouts.keys_dir,
        limits=cloud.rollouts.limits,
    )
    original_record_start = cloud.rollouts._record_start

    def record_then_leader_ticks(*args: object, **kwargs: object) -> None:
        original_record_start(*args, **kwargs)  # type: ignore[arg-type]
        leader.tick()  # the leader's controller runs right after the insert, before this replica publishes

    cloud.rollouts._record_start = record_then_leader_ticks  # type: ignore[method-assign]
    first = cloud.rollouts.deploy(RolloutRequest(NAME, 1, "line-1", canary="0", soak_s=60), actor="alice")
    assert first["state"] == "promoted", first
    assert leader.status(first["id"])["state"] == "promoted"
    for device in devices:
        assert device.wait_for(1)
    promotes = [e for e in entries(cloud.store) if e["action"] == "promote"]
    assert len(promotes) == 1, promotes
    assert promotes[0]["actor"] == "controller"


def _deciding(cloud: Cloud, auto: bool) -> Cloud:
    """The same cloud with a controller that acts on the A/B test's verdict (`ab_auto_decide`) or not."""
    r = cloud.rollouts
    limits = replace(r.limits, ab=SequentialRule(alpha=0.05, min_labels=100, auto_decide=auto))
    rollouts = Rollouts(
        r.store, r.registry, r.publisher, base_url=r.base_url, keys_dir=r.keys_dir, limits=limits, confirm_timeout_s=10
    )
    return replace(cloud, rollouts=rollouts)


@pytest.mark.parametrize(
    ("case", "auto", "challenger_accuracy", "labels", "outcome", "state"),
    [
        ("clearly worse", True, 0.70, 200, "worse", "rolled_back"),
        ("slightly worse", False, 0.86, 3000, "worse", "soaking"),
        ("slightly worse", True, 0.86, 3000, "worse", "rolled_back"),
        ("tie", True, 0.90, 400, "not yet known", "soaking"),
        ("better", True, 0.96, 400, "better", "promoted"),
    ],
)
def test_the_ab_test_decides_and_the_controller_acts_on_it_only_when_asked(
    cloud: Cloud, case: str, auto: bool, challenger_accuracy: float, labels: int, outcome: str, state: str
) -> None:
    """Simulated canary windows (champion arm at 0.90 accuracy) read by the sequential test: its verdict is in
    the status; with ab_auto_decide on, "worse" rolls back and "better" promotes (the verdict in the audit log);
    a tie stays "not yet known" and soaking. A challenger 0.04 worse (under the guard's max_accuracy_drop) is
    only caught by the test, and only acted on when the setting is on."""
    cloud = _deciding(cloud, auto)
    devices = cloud.devices(2)
    cloud.rollouts.deploy(RolloutRequest(NAME, 1, "line-1", canary="0", soak_s=0))
    for device in devices:
        assert device.wait_for(1)
    rollout = cloud.rollouts.deploy(
        RolloutRequest(NAME, 2, "line-1", canary="dev-1", soak_s=0.5, mode="ab", ab_fraction=0.5)
    )
    assert cloud.run_until(rollout["id"], ("soaking",))["state"] == "soaking"
    classes = [str(c) for c in cloud.v1.classes]
    time.sleep(0.6)  # past the soak: only the verdict holds a promotion back
    now, windows = time.time(), 4
    for seq in range(1, windows + 1):
        part = (
            arm_counts(classes, 100, 0, labels // windows, 0.90),
            arm_counts(classes, 100, 0, labels // windows, challenger_accuracy),
        )
        window = make_window("dev-1", "line-1", seq, now - 0.05 + seq / 100, cloud.v1, requests=200)
        arms = {"champion": part[0], "challenger": part[1]}
        devices[0].publish_window(window.model_copy(update={"arms": arms, "ab_model_version": 2}))
    cloud.ingest.wait_idle(2)
    wait_until(lambda: cloud.rollouts.status(rollout["id"])["ab"]["champion"]["requests"] == 400, what="windows")
    for _ in range(3):
        cloud.rollouts.tick()
    status = cloud.rollouts.status(rollout["id"])
    decision = status["ab"]["decision"]
    assert (status["state"], decision["verdict"]) == (state, outcome), status["reason"]
    assert (decision["champion_labels"], decision["challenger_labels"]) == (labels, labels)
    assert decision["auto_decide"] is auto and decision["method"] == "mSPRT"
    if outcome == "not yet known":
        assert decision["confidence"] < 0.95 and decision["decided_at_labels"] is None
        return
    assert decision["confidence"] >= 0.95
    if not auto:
        assert status["reason"] is None  # shown, not acted on
        return
    action = {"rolled_back": "rollback", "promoted": "promote"}[state]
    entry = [e for e in entries(cloud.store) if e["action"] == action][-1]
    assert entry["actor"] == "controller" and entry["details"]["ab"]["decision"]["verdict"] == outcome
    assert f"challenger {outcome}" in status["reason"] and "(ab_auto_decide)" in status["reason"]
    assert f"on {labels} labels" in status["reason"] and "confidence" in status["reason"]
    wanted = 2 if state == "promoted" else 1
    for device in devices if state == "promoted" else devices[:1]:
        assert device.wait_for(wanted)


def test_a_promotion_whose_clearing_timed_out_clears_only_the_rest_and_publishes_the_group_once(
    cloud: Cloud,
) -> None:
    """A broker slow to acknowledge thousands of clearings (10,000 devices at load) made every tick publish the
    group's retained state again. The first clearing attempt here fails after the broker took its first batch (a fault
    injected at the publisher's boundary: the broker underneath is real); the retry clears the rest only."""
    devices = cloud.devices(4)
    first = cloud.rollouts.deploy(RolloutRequest(NAME, 1, "line-1", canary="0", soak_s=0))
    for device in devices:
        assert device.wait_for(1)
    rollout = cloud.rollouts.deploy(RolloutRequest(NAME, 2, "line-1", canary="dev-1,dev-2,dev-3", soak_s=0))
    assert all(device.wait_for(2) for device in devices[:3])
    cloud.run_until(rollout["id"], ("soaking",))
    publisher = cloud.rollouts.publisher
    real_publish, real_publish_many = publisher.publish, publisher.publish_many
    group_publishes: list[str] = []
    calls: list[list[str]] = []

    def publish(topic: str, payload: bytes | str, *args: object, **kwargs: object) -> None:
        group_publishes.append(topic)
        real_publish(topic, payload, *args, **kwargs)  # type: ignore[arg-type]

    def publish_many(messages: list[tuple[str, bytes | str]], *args: object, **kwargs: object) -> None:
        clearing = all(payload == b"" for _, payload in messages)
        if clearing:
            calls.append([topic for topic, _ in messages])
            if len(calls) == 2:  # the first batch went through; the second is "not acknowledged in time"
                raise ServiceUnavailableError(f"did not acknowledge {len(messages)} of {len(messages)} publishes")
        real_publish_many(messages, *args, **kwargs)  # type: ignore[arg-type]

    publisher.publish, publisher.publish_many = publish, publish_many  # type: ignore[method-assign]
    with overrides_batch(1):
        cloud.rollouts.tick()  # soaked -> promote: the group's state published, clearing fails at its second batch
        assert cloud.rollouts.status(rollout["id"])["state"] == "soaking"
        done = cloud.run_until(rollout["id"], ("promoted",))
    assert done["state"] == "promoted" and first["state"] == "promoted"
    assert len(group_publishes) == 1, group_publishes  # not again at each retry
    topic = {i: device_topic(f"dev-{i}", "desired") for i in (1, 2, 3)}
    assert calls == [[topic[1]], [topic[2]], [topic[2]], [topic[3]]], calls  # dev-1 is not cleared twice
    assert devices[3].wait_for(2)


@contextmanager
def overrides_batch(size: int) -> Iterator[None]:
    """Clearings acknowledged and forgotten `size` at a time."""
    before, overrides.CLEAR_BATCH = overrides.CLEAR_BATCH, size
    try:
        yield
    finally:
        overrides.CLEAR_BATCH = before
