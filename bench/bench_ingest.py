"""Telemetry ingest throughput and lag: a fleet simulator plays many devices from one process through a real,
private Mosquitto into the cloud's ingest (cloud_sync.ingest.subscriber.Ingest) on SQLite and PostgreSQL.

    .venv/bin/python bench/bench_ingest.py                       # 10,000 devices every 10 s = 1,000 windows/s
    .venv/bin/python bench/bench_ingest.py --devices 2000 --duration 10 --burst 20000

Rows, each measured in the same run (the publisher runs in its own process so it does not share a GIL with
the ingest):
- broker ceiling: a bare paho subscriber that only counts (no parsing, no database) - what MQTT carries;
- parse ceiling: validating windows with the contract's pydantic models, no broker, no database;
- writer ceiling: `IngestWriter.write` in batches of 500 straight into the store, no broker;
- steady: the fleet at its nominal rate (devices / interval) for --duration seconds: ingested windows/s,
  lag (how far the store is behind the publisher: p50 / max over the run) and drain time after the last publish;
- burst: --burst windows published as fast as possible: where the ingest tops out.

    .venv/bin/python bench/bench_ingest.py --replicas 1,2,3 --devices 10000 --duration 15 --burst 20000

`--replicas`: the steady and burst runs against 1, 2, 3 real `edgeloop cloud` replicas (one PostgreSQL schema,
one shared subscription; bench/replicas.py) instead: ingested windows/s against the 1-replica run of the same
invocation, each replica's share of the burst, and a check that every window sent was stored exactly once.
Not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import paho.mqtt.client as mqtt
import sqlalchemy as sa
from paho.mqtt.enums import CallbackAPIVersion

from cloud_sync.ingest.subscriber import Ingest
from cloud_sync.ingest.writer import Incoming, IngestWriter, parse_message
from cloud_sync.store.db import Store, windows
from contracts.telemetry import CategoricalCounts, NumericCounts, TelemetryWindow

CTX = mp.get_context("spawn")  # the parent runs threads (paho, SQLAlchemy): never fork it


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_broker(directory: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    config = directory / "mosquitto.conf"
    config.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "max_queued_messages 2000000\nmax_inflight_messages 1000\n"
    )
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    process = subprocess.Popen([binary, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process, port
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("mosquitto did not start")


def template() -> bytes:
    """A realistic window (6 numeric features on 11 bins, 1 categorical, latency, classes): ~1.3 KB."""
    features: dict[str, NumericCounts | CategoricalCounts] = {
        f"f{i}": NumericCounts(bins=[9] * 11, missing=1) for i in range(6)
    }
    features["machine_type"] = CategoricalCounts(counts={"A": 30, "B": 40, "C": 29, "__unseen__": 1})
    window = TelemetryWindow(
        device_id="DEVICE",
        group="GROUP",
        seq=0,
        window_start="START",
        window_end="END",
        agent_version="bench",
        model_name="machine-failure",
        model_version=1,
        requests=100,
        records=100,
        latency_counts=[0, 0, 10, 80, 10, 0, 0, 0, 0, 0, 0, 0, 0],
        latency_sum=0.4,
        predicted={"0": 90, "1": 10},
        features=features,
    )
    return window.model_dump_json().encode()


def render(base: bytes, device: str, seq: int, end: float) -> bytes:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(end)) + f".{int(end % 1 * 1000):03d}Z"
    start = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(end - 10)) + "Z"
    return (
        base.replace(b'"DEVICE"', f'"{device}"'.encode())
        .replace(b'"seq":0', f'"seq":{seq}'.encode())
        .replace(b'"START"', f'"{start}"'.encode())
        .replace(b'"END"', f'"{stamp}"'.encode())
        .replace(b'"GROUP"', b'"fleet"')
    )


def publisher(port: int, devices: int, rate: float, total: int, out: mp.Queue, prefix: str = "sim") -> None:
    """Child process: publish `total` windows round-robin over `devices` at `rate`/s (0 = as fast as possible)."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"fleet-{uuid.uuid4().hex[:6]}", protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    base = template()
    seqs = [0] * devices
    marks: list[tuple[float, int]] = []
    started = time.perf_counter()
    info = None
    for n in range(total):
        device = n % devices
        seqs[device] += 1
        name = f"{prefix}-{device:05d}"
        info = client.publish(
            f"edgeloop/v1/devices/{name}/telemetry", render(base, name, seqs[device], time.time()), qos=1
        )
        if n % 100 == 0:
            marks.append((time.time(), n))
            if rate:
                ahead = (n + 1) / rate - (time.perf_counter() - started)
                if ahead > 0:
                    time.sleep(ahead)
            elif n % 2000 == 0:
                info.wait_for_publish(60)  # keep paho's queue short: measure the wire, not a buffer
    if info is not None:
        info.wait_for_publish(120)  # everything PUBACKed by the broker before the clock stops
    marks.append((time.time(), total))
    elapsed = time.perf_counter() - started
    client.disconnect()
    client.loop_stop()
    out.put({"published": total, "seconds": elapsed, "marks": marks})


def count(store: Store) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(windows)).scalar_one())


def run_fleet(store: Store, port: int, devices: int, rate: float, total: int) -> dict[str, float]:
    """Publisher process -> broker -> Ingest -> store; lag = how long ago the store's newest count was published."""
    # One client id for every run: a persistent session left behind would keep taking its share of the
    # shared subscription (see docs/cloud.md, "Retiring an ingest worker").
    ingest = Ingest(store, f"mqtt://127.0.0.1:{port}", client_id="bench-ingest", batch=1000)
    ingest.start()
    ingest.connected.wait(10)
    time.sleep(0.3)
    try:
        return measure(store, port, devices, rate, total)
    finally:
        ingest.stop()


def measure(store: Store, port: int, devices: int, rate: float, total: int) -> dict[str, float]:
    """Publish `total` windows from a child process and follow the store's count until all are stored (whatever
    ingests them: one in-process Ingest, or replicas of `edgeloop cloud`)."""
    before = count(store)
    out: mp.Queue = CTX.Queue()
    child = CTX.Process(target=publisher, args=(port, devices, rate, total, out, uuid.uuid4().hex[:6]))
    samples: list[tuple[float, int]] = []
    started = time.time()
    child.start()
    result = None
    while True:
        samples.append((time.time(), count(store) - before))
        if samples[-1][1] >= total:
            break
        if result is None and not out.empty():
            result = out.get()
        if time.time() - started > 600:
            break
        time.sleep(0.25)
    finished = time.time()
    child.join(30)
    if result is None:
        result = out.get(timeout=30)
    marks = result["marks"]
    lags = []
    for at, done in samples:  # when was the `done`-th window published?
        published_at = next((t for t, n in marks if n >= done), marks[-1][0])
        lags.append(max(0.0, at - published_at))
    lags.sort()
    last_publish = marks[-1][0]
    return {
        "offered": total / result["seconds"],
        "ingested": (samples[-1][1]) / (finished - marks[0][0]),
        "lag_p50": lags[len(lags) // 2] if lags else 0.0,
        "lag_max": lags[-1] if lags else 0.0,
        "drain": max(0.0, finished - last_publish),
        "stored": samples[-1][1],
        "total": total,
    }


def broker_ceiling(port: int, total: int) -> float:
    got = {"n": 0, "first": 0.0, "last": 0.0}

    def on_message(_c: mqtt.Client, _u: object, _m: mqtt.MQTTMessage) -> None:
        got["n"] += 1
        got["last"] = time.time()
        if got["n"] == 1:
            got["first"] = got["last"]

    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-counter", protocol=mqtt.MQTTv5)
    sub.on_message = on_message
    sub.connect("127.0.0.1", port)
    sub.subscribe("edgeloop/v1/devices/+/telemetry", qos=1)
    sub.loop_start()
    time.sleep(0.3)
    out: mp.Queue = CTX.Queue()
    child = CTX.Process(target=publisher, args=(port, 1000, 0, total, out))
    child.start()
    deadline = time.time() + 120
    while got["n"] < total and time.time() < deadline:
        time.sleep(0.05)
    child.join(30)
    sub.loop_stop()
    sub.disconnect()
    return got["n"] / max(got["last"] - got["first"], 1e-9)


def offline_ceilings(store: Store, n: int = 20000) -> tuple[float, float]:
    base = template()
    now = time.time()
    items = [
        Incoming(
            f"edgeloop/v1/devices/off-{i % 1000:05d}/telemetry",
            render(base, f"off-{i % 1000:05d}", i // 1000 + 1, now),
            now,
        )
        for i in range(n)
    ]
    started = time.perf_counter()
    for item in items:
        parse_message(item)
    parse_rate = n / (time.perf_counter() - started)
    writer = IngestWriter(store)
    started = time.perf_counter()
    for start in range(0, n, 500):
        writer.write(items[start : start + 500])
    write_rate = n / (time.perf_counter() - started)
    return parse_rate, write_rate


def stores(tmp: Path) -> list[tuple[str, Store | str]]:
    result: list[tuple[str, Store | str]] = [("sqlite", Store(f"sqlite:///{tmp / 'cloud.db'}").create())]
    for user in ("postgres", "root"):
        try:
            store = Store(f"postgresql+psycopg://{user}@127.0.0.1:5432/test", schema=f"bench_{uuid.uuid4().hex[:8]}")
            result.append(("postgresql", store.create()))
            break
        except Exception as exc:
            last = str(exc).splitlines()[0]
    else:
        result.append(("postgresql", f"unavailable: {last}"))
    return result


def replica_runs(counts: list[int], devices: int, interval: float, duration: float, burst: int) -> None:
    """`--replicas 1,2,3`: for each count, that many real `edgeloop cloud` replicas on one PostgreSQL schema and one
    shared subscription (a fresh broker and schema per count), the steady fleet then the burst; prints the table
    with each count's ingest rate against the 1-replica run of the same invocation, and checks every window sent
    was stored once."""
    from bench.replicas import Replicas

    rate = devices / interval
    rows: list[tuple[str, ...]] = []
    baseline: dict[str, float] = {}
    for replicas_n in counts:
        tmp = Path(tempfile.mkdtemp(prefix="edgeloop-bench-ingest-replicas-"))
        (tmp / "keys").mkdir()
        broker, port = start_broker(tmp)
        try:
            with Replicas(tmp, port, tmp / "keys", replicas_n, alert_tick_s="3600", online_timeout_s="3600") as group:
                time.sleep(0.5)
                results = {"steady": measure(group.store, port, devices, rate, int(rate * duration))}
                after_steady = group.windows_ingested()
                results["burst"] = measure(group.store, port, devices, 0, burst)
                split = [b - a for a, b in zip(after_steady, group.windows_ingested(), strict=True)]
                sent = sum(int(r["total"]) for r in results.values())
                stored, distinct = count(group.store), distinct_windows(group.store)
                duplicates = int(sum(group.metric("edgeloop_cloud_duplicates_total")))
                leaders = group.leaders()
        finally:
            broker.terminate()
            broker.wait(10)
            shutil.rmtree(tmp, ignore_errors=True)
        check = "ok" if stored == distinct == sent and leaders == 1 else "MISMATCH"
        for phase, result in results.items():
            baseline.setdefault(phase, result["ingested"])
            label = f"{replicas_n} replica{'s' if replicas_n > 1 else ''}: " + (
                f"steady {devices:,} devices / {interval:g}s" if phase == "steady" else f"burst {burst:,} windows"
            )
            per_replica = "/".join(f"{n:,}" for n in split) if phase == "burst" else ""
            rows.append((label, f"{result['offered']:,.0f}", f"{result['ingested']:,.0f}",
                         f"{result['ingested'] / baseline[phase]:.2f}x", f"{result['lag_p50']:.2f}",
                         f"{result['lag_max']:.2f}", f"{result['drain']:.2f}", per_replica,
                         f"{sent:,} sent, {stored:,} stored, {distinct:,} distinct, {duplicates} dup, "
                         f"{leaders} leader: {check}" if phase == "burst" else ""))  # fmt: skip
        print(f"  {replicas_n} replicas done: {rows[-1]}", file=sys.stderr, flush=True)
    header = ("run", "offered win/s", "ingested win/s", "vs 1", "lag p50 s", "lag max s", "drain s",
              "burst per replica", "windows")  # fmt: skip
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    print(f"ingest with replicas: {os.cpu_count()} CPUs, `edgeloop cloud` x N on PostgreSQL, shared subscription")
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)))


def distinct_windows(store: Store) -> int:
    with store.engine.connect() as conn:
        keys = sa.select(windows.c.device_id, windows.c.epoch, windows.c.seq).distinct().subquery()
        return int(conn.execute(sa.select(sa.func.count()).select_from(keys)).scalar_one())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000, help="simulated devices")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between two windows of a device")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of steady traffic")
    parser.add_argument("--burst", type=int, default=30_000, help="windows published as fast as possible")
    parser.add_argument("--replicas", help="instead: N `edgeloop cloud` replicas on PostgreSQL per count, e.g. 1,2,3")
    args = parser.parse_args()
    if args.replicas:
        from bench.replicas import replica_counts

        replica_runs(replica_counts(args.replicas), args.devices, args.interval, args.duration, args.burst)
        return
    rate = args.devices / args.interval
    tmp = Path(tempfile.mkdtemp(prefix="edgeloop-bench-ingest-"))
    broker, port = start_broker(tmp)
    rows: list[tuple[str, ...]] = []
    try:
        ceiling = broker_ceiling(port, args.burst)
        print(f"  broker ceiling {ceiling:,.0f}/s", file=sys.stderr, flush=True)
        rows.append(("broker ceiling (count only)", "-", f"{ceiling:,.0f}", "", "", ""))
        for engine, store in stores(tmp):
            if isinstance(store, str):
                rows.append((f"{engine}", store, "", "", "", ""))
                continue
            parse_rate, write_rate = offline_ceilings(store)
            rows.append((f"{engine}: parse ceiling", "-", f"{parse_rate:,.0f}", "", "", ""))
            rows.append((f"{engine}: writer ceiling (batches of 500)", "-", f"{write_rate:,.0f}", "", "", ""))
            steady = run_fleet(store, port, args.devices, rate, int(rate * args.duration))
            rows.append(
                (
                    f"{engine}: steady {args.devices:,} devices / {args.interval:g}s",
                    f"{steady['offered']:,.0f}",
                    f"{steady['ingested']:,.0f}",
                    f"{steady['lag_p50']:.2f}",
                    f"{steady['lag_max']:.2f}",
                    f"{steady['drain']:.2f}",
                )
            )
            burst = run_fleet(store, port, args.devices, 0, args.burst)
            rows.append(
                (
                    f"{engine}: burst {args.burst:,} windows",
                    f"{burst['offered']:,.0f}",
                    f"{burst['ingested']:,.0f}",
                    f"{burst['lag_p50']:.2f}",
                    f"{burst['lag_max']:.2f}",
                    f"{burst['drain']:.2f}",
                )
            )
            if engine == "postgresql":
                store.drop_all()
            store.dispose()
    finally:
        broker.terminate()
        broker.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    header = ("run", "offered win/s", "ingested win/s", "lag p50 s", "lag max s", "drain s")
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    print(f"ingest benchmark: {os.cpu_count()} CPUs, Mosquitto + paho MQTT 5 QoS 1, ack after commit")
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)))


if __name__ == "__main__":
    main()
