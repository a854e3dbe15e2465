"""End-to-end acknowledgement under the faults of issue 15 (`make test-faults`): one agent process under steady
traffic, the real `edgeloop cloud` on PostgreSQL, and a broker that keeps nothing on disk (`persistence false`),
SIGKILLed and restarted twice while the cloud is SIGKILLed and restarted too; then the broker is replaced by a
fresh one on a new data directory. Every broker restart forgets what it had acknowledged and not delivered;
the agent still holds it (the cloud's watermark does not cover it) and sends it again. At the end: stored
request count == requests answered, no duplicate (device, stream, epoch, seq), no hole."""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.agent_helpers import free_port, record_of
from tests.cloud_support import postgres_url
from tests.conftest import Broker, TrainedBundle, _spawn_mosquitto, _wait_port
from tests.fault_helpers import AgentProcess, CloudProcess, Traffic

pytestmark = pytest.mark.faults

DEVICE, GROUP = "gw-ack", "plant-ack"


def _broker(directory: Path, port: int, data: Path | None) -> Broker:
    """Mosquitto on `port`: nothing on disk (`data` None) or persistence in `data`."""
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / f"mosquitto-{time.monotonic_ns()}.conf"
    lines = [f"listener {port} 127.0.0.1", "allow_anonymous true", "max_queued_messages 1000000"]
    if data is None:
        lines.append("persistence false")
    else:
        data.mkdir(parents=True)
        lines += ["persistence true", f"persistence_location {data}/", "user root"]
    config.write_text("\n".join(lines) + "\n")
    broker = Broker("127.0.0.1", port, _spawn_mosquitto(config), config)
    _wait_port("127.0.0.1", port)
    return broker


def _kill(broker: Broker) -> None:
    broker.process.send_signal(signal.SIGKILL)
    broker.process.wait(10)


@pytest.fixture()
def schema() -> Iterator[tuple[str, str]]:
    url, name = postgres_url(), f"edgeloop_ack_{uuid.uuid4().hex[:10]}"
    yield url, name
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
    engine.dispose()


def test_nothing_lost_when_a_broker_without_persistence_and_the_cloud_are_killed(
    tmp_path: Path, schema: tuple[str, str], rf_bundle: TrainedBundle
) -> None:
    port, (store_url, store_schema) = free_port(), schema
    broker = _broker(tmp_path / "broker", port, None)
    cloud = CloudProcess(tmp_path / "cloud", f"mqtt://127.0.0.1:{port}", rf_bundle.keys_dir, ingest_batch=50,
                         store_schema=store_schema)  # fmt: skip
    cloud.args[cloud.args.index("--store-url") + 1] = store_url
    cloud.start()
    agent = AgentProcess(tmp_path / DEVICE, DEVICE, GROUP, rf_bundle.bundle, rf_bundle.public_key,
                         f"mqtt://127.0.0.1:{port}", telemetry_interval=0.2, ack_resend_s=5).start()  # fmt: skip
    traffic = Traffic(agent, [record_of(rf_bundle.bundle, i) for i in range(3)], pause_s=0.005).start()
    try:
        time.sleep(5)
        for _ in range(2):  # a crashed broker whose disk was lost, and the cloud crashing beside it
            _kill(broker)
            time.sleep(1)
            cloud.kill()
            time.sleep(1)
            broker = _broker(tmp_path / "broker", port, None)
            time.sleep(2)
            cloud.start()
            time.sleep(5)
        _kill(broker)  # a replaced broker pod: a fresh broker on a new, empty data directory
        broker = _broker(tmp_path / "broker", port, tmp_path / "fresh-data")
        time.sleep(5)
        traffic.stop()
        assert traffic.failed == [], traffic.failed[:3]
        time.sleep(1)  # the last window closes
        deadline = time.monotonic() + 90
        while (ack := agent.model()["cloud_ack"])["unacknowledged"] or agent.model()["outbox_pending"]:
            assert time.monotonic() < deadline, f"the cloud never acknowledged everything: {ack}"
            time.sleep(0.5)
        assert ack["mode"] == "ack" and ack["resent"] > 0, ack  # the broker restarts did lose messages
        engine = sa.create_engine(store_url, connect_args={"options": f"-csearch_path={store_schema}"})
        with engine.connect() as conn:
            for table in ("windows", "events"):
                rows = conn.execute(sa.text(f"SELECT epoch, seq FROM {table} WHERE device_id = :d"), {"d": DEVICE})
                keys = [tuple(row) for row in rows]
                assert len(keys) == len(set(keys)), f"duplicate (device, epoch, seq) in {table}"
                assert len({epoch for epoch, _ in keys}) == 1
                seqs = sorted(seq for _, seq in keys)
                assert seqs == list(range(1, len(seqs) + 1)), (
                    f"holes in {table}: {sorted(set(range(1, seqs[-1] + 1)) - set(seqs))[:20]}"
                )
            requests = conn.execute(sa.text("SELECT SUM(requests) FROM windows WHERE device_id = :d"), {"d": DEVICE})
            assert requests.scalar_one() == traffic.ok, "stored request count != requests answered"
            unfilled = conn.execute(
                sa.text("SELECT COUNT(*) FROM gaps WHERE filled < last_missing - first_missing + 1")
            )
            assert unfilled.scalar_one() == 0
        engine.dispose()
    finally:
        traffic.stop()
        agent.stop()
        cloud.stop()
        broker.stop()
