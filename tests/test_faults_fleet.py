"""Fault injection across the fleet path (`make test-faults`): several agents (real processes) under traffic,
a real Mosquitto and the real `edgeloop cloud` ingest on SQLite. The broker is stopped for a long while, and
the cloud process is SIGKILLed mid-stream; afterwards every telemetry window and event is in the store exactly
once per (device, seq) and the stored request counts add up to the requests the agents answered.

EDGELOOP_FAULTS_OUTAGE_S sets the broker outage (default 60 s).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from cloud_sync.store.db import dead_letters, events, gaps, windows
from edge_agent.outbox import Outbox
from tests.agent_helpers import desired_state, free_port, record_of
from tests.conftest import Broker, TrainedBundle
from tests.fault_helpers import AgentProcess, CloudProcess, ControlledBundleServer, Traffic

pytestmark = pytest.mark.faults

GROUP = "plant-x"
DEVICES = ("gw-x1", "gw-x2", "gw-x3")
OUTAGE_S = float(os.environ.get("EDGELOOP_FAULTS_OUTAGE_S", "60"))


@pytest.fixture()
def cloud(tmp_path: Path, durable_broker: Broker, rf_bundle: TrainedBundle) -> Iterator[CloudProcess]:
    process = CloudProcess(tmp_path / "cloud", durable_broker.url, rf_bundle.keys_dir, ingest_batch=50).start()
    yield process
    process.stop()


@pytest.fixture()
def fleet(tmp_path: Path, durable_broker: Broker, rf_bundle: TrainedBundle) -> Iterator[list[AgentProcess]]:
    agents = [
        AgentProcess(
            tmp_path / device,
            device,
            GROUP,
            rf_bundle.bundle,
            rf_bundle.public_key,
            durable_broker.url,
            telemetry_interval=0.3,
            download_retries=0,
            download_backoff_s=0.1,
        )
        for device in DEVICES
    ]
    try:
        for agent in agents:
            agent.start()
        yield agents
    finally:
        for agent in agents:
            agent.stop()


def _publish_group(broker: Broker, payload: bytes) -> None:
    from tests.cloud_support import Publisher

    publisher = Publisher(broker.host, broker.port)
    try:
        publisher.send(f"edgeloop/v1/groups/{GROUP}/desired", payload, retain=True)
    finally:
        publisher.close()


def _wait_drained(agents: list[AgentProcess], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    for agent in agents:
        while True:
            outbox = Outbox(agent.state_dir / "outbox.db")
            size = outbox.size()
            outbox.close()
            if size == 0:
                break
            assert time.monotonic() < deadline, f"{agent.device_id} still has {size} messages in its outbox"
            time.sleep(0.2)


def _expected(agent: AgentProcess) -> tuple[set[int], set[int]]:
    """Telemetry and event seqs the agent produced and the broker acknowledged (after it stopped)."""
    outbox = Outbox(agent.state_dir / "outbox.db")
    try:
        pending = {(m.stream, m.seq) for m in outbox.pending(100_000)}
        assert outbox.dropped == 0, "the outbox cap was reached: this test needs every window kept"
        produced = {
            stream: {seq for seq in range(1, outbox.last_seq(stream) + 1) if (stream, seq) not in pending}
            for stream in ("telemetry", "events")
        }
    finally:
        outbox.close()
    return produced["telemetry"], produced["events"]


def _assert_store_has_everything_once(cloud: CloudProcess, agents: list[AgentProcess], ok: dict[str, int]) -> None:
    engine = sa.create_engine(cloud.store_url)
    expected = {agent.device_id: _expected(agent) for agent in agents}
    deadline = time.monotonic() + 60
    try:
        while True:
            with engine.connect() as conn:
                stored = {
                    device: (
                        set(conn.execute(sa.select(windows.c.seq).where(windows.c.device_id == device)).scalars()),
                        set(conn.execute(sa.select(events.c.seq).where(events.c.device_id == device)).scalars()),
                    )
                    for device in expected
                }
            if all(stored[d][0] >= expected[d][0] and stored[d][1] >= expected[d][1] for d in expected):
                break
            if time.monotonic() > deadline:
                missing = {d: (sorted(expected[d][0] - stored[d][0])[:20], sorted(expected[d][1] - stored[d][1]))
                           for d in expected}  # fmt: skip
                raise AssertionError(f"windows/events missing from the store: {missing}")
            time.sleep(0.5)
        with engine.connect() as conn:
            for device, (telemetry, device_events) in expected.items():
                rows = conn.execute(
                    sa.select(windows.c.seq, windows.c.requests).where(windows.c.device_id == device)
                ).all()
                assert [seq for seq, _ in rows if seq not in telemetry] == [], "windows the agent never sent"
                assert len(rows) == len({seq for seq, _ in rows}) == len(telemetry)
                # Every answered request counted exactly once: no window lost, none counted twice.
                assert sum(requests for _, requests in rows) == ok[device], device
                stored_events = conn.execute(sa.select(events.c.seq).where(events.c.device_id == device)).all()
                assert len(stored_events) == len(device_events)
            assert conn.execute(sa.select(sa.func.count()).select_from(gaps)).scalar_one() == 0 or all(
                r.filled >= r.last_missing - r.first_missing + 1 for r in conn.execute(sa.select(gaps)).all()
            )
            assert conn.execute(sa.select(sa.func.count()).select_from(dead_letters)).scalar_one() == 0
    finally:
        engine.dispose()


def _events_with_a_refused_update(broker: Broker, rf_bundle: TrainedBundle, logreg: TrainedBundle) -> None:
    """Every agent refuses an update (HTTP 404 at a dead URL): one `rejected` event each, via the outbox."""
    dead = f"http://127.0.0.1:{free_port()}/v2.onnx"
    _publish_group(broker, desired_state(logreg.bundle, dead).model_dump_json().encode())


def test_long_broker_outage_under_traffic_loses_and_doubles_nothing(
    durable_broker: Broker,
    cloud: CloudProcess,
    fleet: list[AgentProcess],
    rf_bundle: TrainedBundle,
    logreg_bundle_v2: TrainedBundle,
) -> None:
    records = [record_of(rf_bundle.bundle, i) for i in range(3)]
    traffic = [Traffic(agent, records, pause_s=0.02).start() for agent in fleet]
    server = ControlledBundleServer()
    try:
        _events_with_a_refused_update(durable_broker, rf_bundle, logreg_bundle_v2)
        time.sleep(3)
        durable_broker.stop()
        time.sleep(OUTAGE_S)  # windows pile up in every agent's outbox; serving goes on
        durable_broker.start()
        # After the outage: a real update, so every agent also sends `deployed` events.
        server.serve((logreg_bundle_v2.bundle / "model.onnx").read_bytes())
        _publish_group(durable_broker, desired_state(logreg_bundle_v2.bundle, server.url).model_dump_json().encode())
        for agent in fleet:
            agent.wait_version(records[0], 2, timeout=60)
        time.sleep(2)
    finally:
        for generator in traffic:
            generator.stop()
        server.stop()
    for generator in traffic:
        assert generator.failed == [], generator.failed[:3]
        assert generator.ok > OUTAGE_S * 10  # traffic really ran through the outage
    _wait_drained(fleet)
    for agent in fleet:
        agent.stop()  # the final window goes out too
    ok = {generator.agent.device_id: generator.ok + generator.agent.answered for generator in traffic}
    _assert_store_has_everything_once(cloud, fleet, ok)


def test_cloud_ingest_sigkilled_mid_stream_loses_and_doubles_nothing(
    durable_broker: Broker,
    cloud: CloudProcess,
    fleet: list[AgentProcess],
    rf_bundle: TrainedBundle,
    logreg_bundle_v2: TrainedBundle,
) -> None:
    records = [record_of(rf_bundle.bundle, i) for i in range(3)]
    traffic = [Traffic(agent, records, pause_s=0.01).start() for agent in fleet]
    try:
        _events_with_a_refused_update(durable_broker, rf_bundle, logreg_bundle_v2)
        for _ in range(3):  # three kills, each while windows are flowing
            time.sleep(3)
            cloud.kill()
            time.sleep(3)  # the broker queues for the ingest's persistent session meanwhile
            cloud.start()
        time.sleep(3)
    finally:
        for generator in traffic:
            generator.stop()
    for generator in traffic:
        assert generator.failed == [], generator.failed[:3]
    _wait_drained(fleet)
    for agent in fleet:
        agent.stop()
    ok = {generator.agent.device_id: generator.ok + generator.agent.answered for generator in traffic}
    _assert_store_has_everything_once(cloud, fleet, ok)
