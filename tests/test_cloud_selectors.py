"""Device labels and selectors: the grammar, and a rollout by selector against a real broker with simulated
devices that report labels (it reaches exactly the labelled devices; the others keep their version)."""

from __future__ import annotations

import time

import pytest

from cloud_sync.fleet.simulator import SimDevice
from cloud_sync.fleet.stats import device_list
from cloud_sync.rollouts.model import RolloutRequest
from cloud_sync.rollouts.selectors import Selector, members, with_each_label
from cloud_sync.store.audit import entries
from contracts.errors import InputError
from contracts.labels import format_labels, parse_labels
from edge_agent.settings import AgentSettings
from tests.cloud_support import wait_until
from tests.test_cloud_rollouts import NAME, Cloud, cloud  # noqa: F401 (the fixture)

GRAZ_PI4 = {"site": "graz", "hw": "pi4"}


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("site=graz", ["a", "b", "c"]),
        ("site==graz,hw=pi4", ["a", "c"]),
        ("hw!=pi4", ["b", "e"]),  # a device without hw matches hw!=pi4, as in Kubernetes
        ("hw in (pi4, pi5)", ["a", "b", "c", "d"]),
        ("hw notin (pi4),site", ["b"]),
        ("!site", ["e"]),
        ("fw", ["c"]),
    ],
)
def test_a_selector_matches_the_labels_it_states(selector: str, expected: list[str]) -> None:
    fleet = [
        {"device_id": "a", "labels": GRAZ_PI4},
        {"device_id": "b", "labels": {"site": "graz", "hw": "pi5"}},
        {"device_id": "c", "labels": {**GRAZ_PI4, "fw": "1.2"}},
        {"device_id": "d", "labels": {"site": "wien", "hw": "pi4"}},
        {"device_id": "e", "labels": {}},
    ]
    assert sorted(members(fleet, selector)) == expected
    assert str(Selector.parse(str(Selector.parse(selector)))) == str(Selector.parse(selector))  # canonical


@pytest.mark.parametrize(
    ("selector", "message"),
    [
        ("", "empty"),
        ("site=graz,,hw=pi4", "empty requirement"),
        ("site=gr az", "value is at most 63"),
        ("hw in ()", "lists no value"),
        ("hw maybe pi4", "is not key=value"),
        ("=graz", "label key ''"),
    ],
)
def test_a_bad_selector_is_one_clear_line(selector: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        Selector.parse(selector)


def test_labels_parse_and_format_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGELOOP_AGENT_LABELS", "site=graz,hw=pi4")
    assert AgentSettings().labels == GRAZ_PI4  # the agent's setting, from its env var
    monkeypatch.setenv("EDGELOOP_AGENT_LABELS", "site")
    with pytest.raises(ValueError, match="not key=value"):
        AgentSettings()
    assert parse_labels(" site=graz , hw=pi4,") == GRAZ_PI4
    assert format_labels(GRAZ_PI4) == "hw=pi4,site=graz"
    with pytest.raises(ValueError, match="not key=value"):
        parse_labels("site")


def test_the_canary_per_label_has_one_device_of_each_value() -> None:
    fleet = {"a": GRAZ_PI4, "b": GRAZ_PI4, "c": {"hw": "pi5"}, "d": {}, "e": {"hw": "pi5"}}
    assert with_each_label(["a"], fleet, "hw") == ["a", "c", "d"]  # pi4 (a), pi5 (c), unlabelled (d)
    assert with_each_label(["a"], fleet, None) == ["a"]
    with pytest.raises(InputError, match="needs a canary"):
        with_each_label([], fleet, "hw")


def test_a_rollout_by_selector_reaches_exactly_the_labelled_devices(cloud: Cloud) -> None:  # noqa: F811
    labels = [GRAZ_PI4, {"site": "graz", "hw": "pi5"}, GRAZ_PI4, {"site": "wien", "hw": "pi4"}, {}]
    devices = [
        SimDevice(f"dev-{i}", "line-1", cloud.broker.host, cloud.broker.port, labels=device_labels).start()
        for i, device_labels in enumerate(labels, start=1)
    ]
    known = lambda: {d["device_id"]: d["labels"] for d in device_list(cloud.store, "line-1")}  # noqa: E731
    wait_until(lambda: known() == {f"dev-{i}": value for i, value in enumerate(labels, start=1)}, what="labels")
    first = cloud.rollouts.deploy(RolloutRequest(NAME, 1, "line-1", canary="0", soak_s=0))
    assert first["state"] == "promoted" and all(device.wait_for(1) for device in devices)

    with pytest.raises(InputError, match="matches no device of group line-1"):
        cloud.rollouts.deploy(RolloutRequest(NAME, 2, "line-1", selector="site=linz"))
    request = RolloutRequest(NAME, 2, "line-1", canary="25%", soak_s=0.5, selector="site=graz", canary_per_label="hw")
    rollout = cloud.rollouts.deploy(request, actor="alice")
    assert rollout["selector"] == "site=graz"
    assert rollout["canary"] == ["dev-1", "dev-2"]  # 25 % of the 3 graz devices, plus one pi5 for --canary-per-label
    assert [d["device_id"] for d in rollout["devices"]] == ["dev-1", "dev-2", "dev-3"]
    done = cloud.run_until(rollout["id"], ("promoted", "rolled_back"))
    assert done["state"] == "promoted", done["reason"]
    assert all(device.wait_for(2) for device in devices[:3])
    time.sleep(0.5)  # a stray group publish would reach dev-4 and dev-5 within this
    assert [d.model[1] if d.model else None for d in devices] == [2, 2, 2, 1, 1]
    assert [d.history for d in devices[3:]] == [[(NAME, 1)], [(NAME, 1)]]
    assert cloud.rollouts.status(rollout["id"], per_device=False)["on_target"] == 3
    deploy = next(e for e in entries(cloud.store) if e["action"] == "deploy" and e["actor"] == "alice")
    assert deploy["details"]["selector"] == "site=graz" and deploy["details"]["canary_per_label"] == "hw"

    # Rolling the promoted selector rollout back reaches the same devices only (a signed rollback to v1).
    back = cloud.rollouts.rollback(rollout["id"], reason="site test")
    assert back["state"] == "rolled_back"
    assert all(device.wait_for(1) for device in devices[:3])
    assert [d.history for d in devices[3:]] == [[(NAME, 1)], [(NAME, 1)]]
