"""What an operator sees while devices hold messages the cloud has not acknowledged (issue 15), with real parts: an
agent (onnxruntime, outbox, MQTT) and a real `edgeloop cloud` process through a private Mosquitto. The cloud first
runs with its acknowledgement off, so the agent keeps every window it sent (its fallback is far away); the count and
the oldest age its windows report reach GET /v1/devices and the cloud's /metrics. Then the cloud restarts with
acknowledgements on: the agent's outbox empties and the next windows bring the count back to 0."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.agent_helpers import AgentServer, record_of
from tests.cloud_support import wait_until
from tests.conftest import Broker, TrainedBundle
from tests.fault_helpers import CloudProcess
from tests.test_cloud_metrics import samples

DEVICE, GROUP = "gw-unacked", "line-u"


@pytest.fixture()
def keys(tmp_path: Path) -> Path:
    (tmp_path / "keys").mkdir()
    return tmp_path / "keys"


@pytest.fixture()
def agent(tmp_path: Path, broker: Broker, rf_bundle: TrainedBundle) -> Iterator[AgentServer]:
    server = AgentServer(state_dir=tmp_path / "agent", bundle=rf_bundle.bundle, public_key=rf_bundle.public_key,
                         device_id=DEVICE, group=GROUP, mqtt_url=broker.url, telemetry_interval_s=0.5,
                         ack_fallback_s=600.0, ack_resend_s=2.0)  # fmt: skip
    # ack_resend_s: the windows sent before the first cloud subscribed never reach it; they are sent again.
    yield server
    server.stop()


def _device(cloud: CloudProcess) -> dict[str, Any]:
    rows = httpx.get(f"{cloud.url}/v1/devices", timeout=5).json()
    return next((row for row in rows if row["device_id"] == DEVICE), {})


def _metrics(cloud: CloudProcess) -> tuple[float | None, float | None]:
    scraped = samples(httpx.get(f"{cloud.url}/metrics", timeout=5).text)
    label = (("group", GROUP),)
    return (
        scraped.get(("edgeloop_cloud_device_unacknowledged_messages", label)),
        scraped.get(("edgeloop_cloud_device_unacknowledged_oldest_seconds", label)),
    )


def test_unacknowledged_messages_reach_the_device_list_and_metrics_and_return_to_zero(
    tmp_path: Path, broker: Broker, keys: Path, agent: AgentServer, rf_bundle: TrainedBundle
) -> None:
    record = record_of(rf_bundle.bundle)
    assert agent.agent.outbox is not None
    cloud = CloudProcess(tmp_path / "cloud", broker.url, keys, ack_enabled=False).start()
    try:
        for _ in range(3):
            assert agent.predict({"records": [record]}).status_code == 200
        wait_until(lambda: (_device(cloud).get("unacknowledged") or 0) >= 3, 20, "3 unacknowledged in /v1/devices")
        row = _device(cloud)
        assert row["group"] == GROUP and row["unacknowledged_oldest_s"] > 0, row
        assert row["unacknowledged_reported_at"] is not None
        held, oldest = _metrics(cloud)
        assert held is not None and held >= 3 and oldest is not None and oldest > 0, (held, oldest)
        # The agent itself agrees: it still holds them (the cloud stores them but never acknowledges).
        assert agent.agent.outbox.unacknowledged()[0] >= held
        assert agent.client.get("/v1/model").json()["cloud_ack"]["mode"] == "waiting"
    finally:
        cloud.stop()

    cloud = CloudProcess(tmp_path / "cloud", broker.url, keys, ack_enabled=True, ack_interval_s=0.2).start()
    try:
        wait_until(lambda: agent.client.get("/v1/model").json()["cloud_ack"]["mode"] == "ack", 20, "acks flowing")
        wait_until(lambda: _device(cloud).get("unacknowledged") == 0, 20, "0 unacknowledged in /v1/devices")
        assert _device(cloud)["unacknowledged_oldest_s"] is None
        wait_until(lambda: _metrics(cloud) == (0.0, 0.0), 10, "0 unacknowledged in /metrics")
    finally:
        cloud.stop()
