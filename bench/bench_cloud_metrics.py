"""What a scrape of the cloud's `/metrics` costs when the fleet is large: the fleet numbers are counted in the
store at scrape time (issue 17), so this fills a PostgreSQL schema with DEVICES devices in GROUPS groups, one gap
per 10 devices, 50 rollouts and one firing alert per 50 devices, then times `GET /metrics` against `GET /healthz`
(the same-run baseline: same app, same client, no store work) in interleaved rounds, through FastAPI's
TestClient in this process (no network: the figure is the app's own work).

    .venv/bin/python bench/bench_cloud_metrics.py [--devices 10000] [--calls 200] [--rounds 3] [--sqlite]

Prints one row per route: calls, p50 / p99 in ms.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from fastapi.testclient import TestClient

from cloud_sync.api.app import create_app
from cloud_sync.api.context import CloudContext
from cloud_sync.ingest.publisher import MqttPublisher
from cloud_sync.rollouts.controller import Rollouts
from cloud_sync.store.bundles import BundleRegistry
from cloud_sync.store.db import Store, alerts, devices, gaps, rollouts

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def fill(store: Store, count: int, groups: int) -> None:
    now = time.time()
    device_rows = [
        {
            "device_id": f"dev-{i}",
            "group_name": f"line-{i % groups}",
            "first_seen": now,
            "last_seen": now - (i % 300),
            "online": i % 7 != 0,
        }
        for i in range(count)
    ]
    gap_rows = [
        {
            "device_id": f"dev-{i}",
            "stream": "telemetry",
            "epoch": 0,
            "first_missing": 5,
            "last_missing": 6,
            "filled": i % 2 * 2,
            "detected_at": now,
        }
        for i in range(0, count, 10)
    ]
    rollout_rows = [
        {
            "id": f"r-{i}",
            "group_name": f"line-{i % groups}",
            "model_name": "m",
            "model_version": i + 1,
            "canary": [],
            "soak_s": 60.0,
            "state": ("promoted", "rolled_back", "failed")[i % 3],
            "actor": "bench",
            "created_at": now,
        }
        for i in range(50)
    ]
    alert_rows = [
        {
            "rule": ("device-offline", "feature-drift")[i % 2],
            "subject": f"dev-{i}",
            "state": "firing",
            "severity": "warning",
            "message": "bench",
            "fired_at": now,
        }
        for i in range(0, count, 50)
    ]
    with store.begin() as conn:
        for table, rows in ((devices, device_rows), (gaps, gap_rows), (rollouts, rollout_rows), (alerts, alert_rows)):
            conn.execute(table.insert(), rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--groups", type=int, default=20)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sqlite", action="store_true", help="a SQLite file instead of PostgreSQL")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-cloud-metrics-"))
    if args.sqlite:
        store = Store(f"sqlite:///{workdir / 'cloud.db'}").create()
    else:
        store = Store(PG_URL, schema=f"edgeloop_bench_{uuid.uuid4().hex[:8]}").create()
    try:
        fill(store, args.devices, args.groups)
        registry = BundleRegistry(workdir / "bundles", None)
        publisher = MqttPublisher("mqtt://127.0.0.1:9", client_id="bench-unused")  # never started: no broker needed
        context = CloudContext(
            store,
            registry,
            Rollouts(store, registry, publisher, base_url="http://127.0.0.1:9", keys_dir=workdir),
            [],
            [],
        )
        timings: dict[str, list[float]] = {"/healthz": [], "/metrics": []}
        with TestClient(create_app(context)) as client:
            assert "edgeloop_cloud_devices{" in client.get("/metrics").text
            for _ in range(args.rounds):
                for path, ms in timings.items():
                    for _ in range(args.calls):
                        start = time.perf_counter()
                        response = client.get(path)
                        ms.append((time.perf_counter() - start) * 1000)
                        assert response.status_code == 200
        engine = "SQLite" if args.sqlite else "PostgreSQL"
        print(
            f"cloud /metrics vs /healthz, {engine}, {args.devices} devices in {args.groups} groups, "
            f"{args.rounds} interleaved rounds of {args.calls} calls"
        )
        print(f"{'route':10} {'calls':>6} {'p50 ms':>8} {'p99 ms':>8}")
        for path, ms in timings.items():
            p99 = sorted(ms)[int(len(ms) * 0.99) - 1]
            print(f"{path:10} {len(ms):>6} {statistics.median(ms):>8.2f} {p99:>8.2f}")
    finally:
        store.drop_all()
        store.dispose()


if __name__ == "__main__":
    main()
