"""Honest clocks (issue 21) with real parts: an agent process whose clock is 7 days slow (the test hook
EDGELOOP_TEST_CLOCK_OFFSET_S of edge_agent/clock.py shifts every time it puts on the wire), with labels, and a
real `edgeloop cloud` process through a private Mosquitto. The cloud measures the offset from the send times the
agent stamps on its outbox messages, stores the windows at the right (cloud) times, shows the offset and the
labels in GET /v1/devices and /metrics, fires the clock-skew alert, and still acknowledges what it stored."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import sqlalchemy as sa

from cloud_sync.ingest.clocks import ClockReading, correction, measure
from cloud_sync.store.db import Store, windows
from cloud_sync.times import epoch
from edge_agent.clock import OFFSET_ENV
from tests.agent_helpers import record_of
from tests.cloud_support import wait_until
from tests.conftest import Broker, TrainedBundle
from tests.fault_helpers import AgentProcess, CloudProcess
from tests.test_cloud_metrics import samples

DEVICE, GROUP = "pi-no-rtc", "line-c"
WEEK = 7 * 86400.0


def test_the_offset_is_the_smallest_receive_minus_send_and_small_ones_are_delay() -> None:
    readings = measure([("a", 100.0, 40.0), ("a", 101.0, 60.0), ("b", 100.0, None), ("c", 50.0, 49.5)])
    assert readings == {"a": ClockReading(41.0, 101.0), "c": ClockReading(0.5, 50.0)}  # b stamped no send time
    assert correction(readings["a"], 2.0) == 41.0
    assert correction(readings["c"], 2.0) == 0.0  # within the tolerance: delivery delay, times kept
    assert correction(None, 2.0) == 0.0


@pytest.fixture()
def cloud(tmp_path: Path, broker: Broker) -> Iterator[CloudProcess]:
    (tmp_path / "keys").mkdir()
    process = CloudProcess(tmp_path / "cloud", broker.url, tmp_path / "keys", alert_tick_s=0.5, ack_interval_s=0.2)
    yield process.start()
    process.stop()


@pytest.fixture()
def slow_agent(tmp_path: Path, broker: Broker, rf_bundle: TrainedBundle) -> Iterator[AgentProcess]:
    agent = AgentProcess(tmp_path / "agent", DEVICE, GROUP, rf_bundle.bundle, rf_bundle.public_key, broker.url,
                         labels="site=graz,hw=pi4")  # fmt: skip
    agent.env[OFFSET_ENV] = str(-WEEK)  # the device's clock says a week ago
    yield agent.start()
    agent.stop()


def _device(cloud: CloudProcess) -> dict[str, Any]:
    rows = httpx.get(f"{cloud.url}/v1/devices", timeout=5).json()
    return next((row for row in rows if row["device_id"] == DEVICE), {})


def test_a_week_slow_agent_lands_its_windows_at_the_right_times_and_fires_the_skew_alert(
    cloud: CloudProcess, slow_agent: AgentProcess, rf_bundle: TrainedBundle
) -> None:
    record = record_of(rf_bundle.bundle)
    for _ in range(5):
        assert slow_agent.predict({"records": [record]}).status_code == 200
    store = Store(cloud.store_url)
    try:

        def stored() -> list[Any]:
            with store.engine.connect() as conn:
                c = windows.c
                query = sa.select(c.window_start, c.window_end, c.received_at, c.requests, c.payload).where(
                    c.device_id == DEVICE
                )
                return list(conn.execute(query))

        wait_until(lambda: sum(row.requests for row in stored()) >= 5, 30, "the 5 requests' windows stored")
        for row in stored():
            sent = orjson.loads(row.payload)
            assert row.received_at - epoch(sent["window_end"]) > WEEK - 60  # on the wire: a week behind
            assert abs(row.window_end - row.received_at) < 10, row  # stored on the cloud's clock
            assert 0 <= row.window_end - row.window_start < 10
        # Periods and rates use the stored times: the last 5 minutes hold the requests.
        stats = httpx.get(f"{cloud.url}/v1/fleet/stats", params={"device": DEVICE, "since": "5m"}, timeout=5).json()
        assert stats["total"]["requests"] >= 5, stats

        device = _device(cloud)
        assert abs(device["clock_offset_s"] - WEEK) < 10, device  # positive: the device is slow
        assert device["labels"] == {"site": "graz", "hw": "pi4"} and device["clock_offset_at"] is not None
        scraped = samples(httpx.get(f"{cloud.url}/metrics", timeout=5).text)
        assert abs(scraped[("edgeloop_cloud_device_clock_skew_seconds", (("group", GROUP),))] - WEEK) < 10

        def skew_alert() -> dict[str, Any] | None:
            alerts = httpx.get(f"{cloud.url}/v1/alerts", params={"state": "firing"}, timeout=5).json()
            return next((a for a in alerts if a["rule"] == "clock-skew" and a["subject"] == DEVICE), None)

        wait_until(lambda: skew_alert() is not None, 20, "the clock-skew alert firing")
        alert = skew_alert()
        assert alert is not None and "7.0 d slow" in alert["message"] and alert["threshold"] == 300.0, alert
        # Acknowledgement watermarks ride on sequence numbers, not clocks: the agent's outbox empties.
        wait_until(lambda: slow_agent.model()["cloud_ack"]["mode"] == "ack", 20, "acks reaching the slow agent")
        wait_until(lambda: _device(cloud).get("unacknowledged") == 0, 20, "nothing left unacknowledged")
    finally:
        store.dispose()
