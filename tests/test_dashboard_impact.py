"""The dashboard's business-impact panel in headless Chromium (Debian's /usr/bin/chromium, Playwright).

The real cloud service (tests/test_dashboard.py's `running_cloud`, with a `value_matrices` file giving
machine-failure a cost/benefit matrix), a real Mosquitto, and two devices of the v1 contract (`SimDevice`)
that publish telemetry windows carrying feedback confusion counts: first on v1, then, after a real rollout
moved the group to v2, on v2. The model page's "Business value" table must show, per version, the labelled
predictions, the value, the value per label and the estimate over every record, and the deployment table the
rollout's change per 1000 predictions against v1 before it, each equal to what this test computes by hand from
the counts it sent and the matrix (no cloud code involved), with no console or page error.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloud_sync.fleet.simulator import SimDevice, make_window
from tests.cloud_support import wait_until
from tests.conftest import Broker, TrainedBundle
from tests.test_dashboard import CHROMIUM, OPERATOR, SCREENSHOTS, RunningCloud, dashboard_page, running_cloud

pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)"
)

GROUP = "line-7"
UNIT = "EUR"
# values[actual][predicted], binary shorthand in the YAML: tp, fp, fn, tn.
MATRIX = {"tp": 800, "fp": -120, "fn": -2500, "tn": 0}
CELL = {("1", "1"): "tp", ("0", "1"): "fp", ("1", "0"): "fn", ("0", "0"): "tn"}
# (device, records scored, confusion[actual][predicted]) per window; labels are a subset of the records.
V1_WINDOWS = [
    ("gw-1", 260, {"1": {"1": 7, "0": 2}, "0": {"1": 6, "0": 110}}),
    ("gw-1", 240, {"1": {"1": 5, "0": 2}, "0": {"1": 4, "0": 64}}),
    ("gw-2", 300, {"1": {"1": 8, "0": 1}, "0": {"1": 5, "0": 86}}),
]
V2_WINDOWS = [
    ("gw-1", 280, {"1": {"1": 11, "0": 1}, "0": {"1": 3, "0": 135}}),
    ("gw-2", 320, {"1": {"1": 12, "0": 0}, "0": {"1": 7, "0": 111}}),
]


def _expected(windows: list[tuple[str, int, dict[str, dict[str, int]]]]) -> dict[str, float]:
    """Value of the windows by hand: every (actual, predicted) count times its matrix entry."""
    records = sum(w[1] for w in windows)
    labels = sum(n for _d, _r, confusion in windows for row in confusion.values() for n in row.values())
    value = sum(
        n * MATRIX[CELL[(actual, predicted)]]
        for _d, _r, confusion in windows
        for actual, row in confusion.items()
        for predicted, n in row.items()
    )
    return {"records": records, "labels": labels, "value": value, "per_label": value / labels}


@pytest.fixture()
def cloud(
    broker: Broker, tmp_path: Path, rf_bundle: TrainedBundle, logreg_bundle_v2: TrainedBundle
) -> Iterator[RunningCloud]:
    matrices = tmp_path / "values.yaml"
    entries = ", ".join(f"{key}: {value}" for key, value in MATRIX.items())
    matrices.write_text(f"models:\n  machine-failure: {{unit: {UNIT}, positive: 1, negative: 0, {entries}}}\n")
    with running_cloud(broker, tmp_path, rf_bundle, logreg_bundle_v2, value_matrices=matrices) as running:
        yield running


def _publish(devices: dict[str, SimDevice], cloud: RunningCloud, version: int, end: float) -> None:
    manifest = cloud.v1 if version == 1 else cloud.v2
    for device_id, records, confusion in V1_WINDOWS if version == 1 else V2_WINDOWS:
        device = devices[device_id]
        device.telemetry_seq += 1
        window = make_window(device_id, GROUP, device.telemetry_seq, end, manifest, requests=records)
        device.publish_window(window.model_copy(update={"confusion": confusion}))


def _windows_of(cloud: RunningCloud, version: int) -> int:
    """Windows of that version in the cloud's store (ingest is asynchronous)."""
    import sqlalchemy as sa

    from cloud_sync.store.db import windows

    query = sa.select(sa.func.count()).select_from(windows).where(windows.c.model_version == version)
    with cloud.service.store.engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def _cells(row: Any) -> list[str]:
    return [cell.strip() for cell in row.locator("td").all_inner_texts()]


def test_impact_panel_shows_value_per_version_and_the_change_of_a_rollout(cloud: RunningCloud) -> None:
    v1, v2 = _expected(V1_WINDOWS), _expected(V2_WINDOWS)
    devices = {
        name: SimDevice(name, GROUP, cloud.broker.host, cloud.broker.port, model=(cloud.v1.name, 1)).start()
        for name in ("gw-1", "gw-2")
    }
    try:
        wait_until(lambda: len(cloud.get("/v1/devices")) == 2, timeout=15, what="two devices online")
        _publish(devices, cloud, 1, time.time() - 5)
        wait_until(lambda: _windows_of(cloud, 1) == len(V1_WINDOWS), timeout=15, what="v1 windows ingested")
        body = {"model_name": cloud.v2.name, "model_version": 2, "group": GROUP, "canary": "0", "soak_minutes": 0}
        response = httpx.post(cloud.url + "/v1/rollouts", json=body, headers=OPERATOR, timeout=10)
        assert response.status_code == 201, response.text
        rollout_id = response.json()["id"]
        assert all(device.wait_for(2) for device in devices.values()), [d.model for d in devices.values()]
        wait_until(lambda: cloud.get(f"/v1/rollouts/{rollout_id}")["state"] == "promoted", timeout=15, what="promoted")
        time.sleep(0.1)  # window ends strictly after the rollout started
        _publish(devices, cloud, 2, time.time())
        wait_until(lambda: _windows_of(cloud, 2) == len(V2_WINDOWS), timeout=15, what="v2 windows ingested")

        with dashboard_page(cloud) as (page, problems, external):
            page.goto(cloud.url + "/dashboard")
            page.wait_for_selector("text=Token needed")
            page.fill("#token", "look")
            page.click("#token-form button")
            page.click("a[data-nav='models']")
            panel = page.locator("#value-0")
            panel.locator("table.value").nth(1).wait_for(timeout=15_000)
            page.screenshot(path=str(SCREENSHOTS / "impact.png"), full_page=True)
            page.locator("#value-0").screenshot(path=str(SCREENSHOTS / "impact-panel.png"))
            headers = panel.locator("table.value").first.locator("th").all_text_contents()  # (CSS upper-cases)
            versions = panel.locator("table.value").first.locator("tbody tr")
            shown_versions = [_cells(versions.nth(i)) for i in range(versions.count())]
            deployments = panel.locator("table.value").nth(1).locator("tbody tr")
            shown_deployments = [_cells(deployments.nth(i)) for i in range(deployments.count())]
            title = panel.locator("h3").first.inner_text()
        assert not external, f"the page fetched from outside the cloud: {external}"
        assert not problems, "\n".join(problems)
    finally:
        for device in devices.values():
            device.stop()

    assert title.startswith("Business value")
    assert headers == ["Version", "Labelled", "Value (labelled)", "Per label", "Estimated, all records"]
    assert shown_versions == [
        [
            f"v{version}",
            str(expected["labels"]),
            f"{expected['value']:.0f} {UNIT}",
            f"{expected['per_label']:.2f} {UNIT}",
            f"{expected['per_label'] * expected['records']:.0f} {UNIT}",
        ]
        for version, expected in ((1, v1), (2, v2))
    ]
    change_per_1000 = (v2["per_label"] - v1["per_label"]) * 1000
    assert shown_deployments == [[rollout_id, "v1 → v2", GROUP, "promoted", f"{change_per_1000:.0f} {UNIT}"]]
