"""Telemetry overhead and outbox throughput, one run.

    .venv/bin/python bench/bench_telemetry.py [--bundle DIR] [--duration 5] [--rounds 3] [--messages 20000]

1. REST: the same agent and model served twice side by side, telemetry on (MQTT to a private Mosquitto,
   window counting + drift on every prediction, 1 s windows through the outbox) and off (offline); loaded
   in interleaved rounds with wrk (medians), single-record and 100-record batch bodies.
2. Outbox: messages/s persisted (SQLite WAL, synchronous=FULL, one transaction each) and drained to the
   broker at QoS 1 (PUBACK-acknowledged deletes), against a paho QoS 1 publish loop as the anchor.
Not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_agent_rest import (
    TOKEN,
    build_model,
    free_port,
    load_rounds,
    lua,
    start,
    start_broker,
)

from edge_agent.outbox import Outbox
from edge_agent.publisher import OutboxPublisher


def rest_overhead(work: Path, bundle: Path, duration: float, rounds: int) -> None:
    import os

    manifest = orjson.loads((bundle / "manifest.json").read_bytes())
    record = manifest["golden_samples"][0]["inputs"]
    bodies = {"1 record": orjson.dumps(record), "100 records": orjson.dumps({"records": [record] * 100})}
    key = bundle.parent / "keys" / "edgeloop-signing.pub"
    env = {**os.environ, "EDGELOOP_HOME": str(work / "home"), "EDGELOOP_LOG_LEVEL": "WARNING"}
    broker = start_broker(work)
    assert broker is not None, "mosquitto is needed for this bench"
    servers = []
    try:
        for label, extra in (
            ("telemetry on", ["--mqtt-url", f"mqtt://127.0.0.1:{broker[1]}", "--telemetry-interval", "1"]),
            ("telemetry off", []),
        ):
            port = free_port()
            cmd = [sys.executable, "-m", "edge_agent", "--bundle", str(bundle), "--state-dir", str(work / label),
                   "--port", str(port), "--token", TOKEN, "--public-key", str(key), "--device-id",
                   label.replace(" ", "-"), *extra]  # fmt: skip
            base = f"http://127.0.0.1:{port}"
            for body_name, body in bodies.items():
                script = lua(
                    work / f"{label}-{body_name}.lua".replace(" ", "_"), body, {"Authorization": f"Bearer {TOKEN}"}
                )
                if body_name == "1 record":
                    server = start(f"{label}, {body_name}", cmd, env, f"{base}/readyz", f"{base}/v1/predict", script)
                    servers.append(server)
                else:
                    clone = type(server)(type(server.result)(f"{label}, {body_name}", 0.0), server.process,
                                         server.url, script)  # fmt: skip
                    servers.append(clone)
        load_rounds(servers, [1, 16], duration, rounds)
    finally:
        for server in servers:
            server.stop()
        broker[0].terminate()
        broker[0].wait(10)
    print("\nREST with telemetry on vs off (same agent, same model, interleaved rounds, medians)")
    print(f"{'case':<32} {'c':>3} {'req/s':>9} {'p99 ms':>8}")
    by_name = {server.result.name: server.result for server in servers}
    for body_name in bodies:
        for connections in (1, 16):
            on = by_name[f"telemetry on, {body_name}"].rates[connections]
            off = by_name[f"telemetry off, {body_name}"].rates[connections]
            for label, rate in (("on", on), ("off", off)):
                print(f"{'telemetry ' + label + ', ' + body_name:<32} {connections:>3} {rate[0]:>9.0f} {rate[2]:>8.2f}")
            print(f"{'  overhead':<32} {connections:>3} {100 * (1 - on[0] / off[0]):>8.1f}%")


def in_process_overhead(bundle: Path, calls: int = 3000) -> None:
    """The hot-path cost without HTTP: schema check + session.run vs the window counter, one record."""
    import statistics

    from contracts.bundle import load_bundle
    from contracts.runtime import OnnxModel, encode_records
    from contracts.telemetry import WindowCounter

    loaded = load_bundle(bundle)
    model = OnnxModel.load(loaded, intra_op_threads=1)
    counter = WindowCounter(loaded.manifest)
    record = loaded.manifest.golden_samples[0].inputs
    predict, count = [], []
    for _ in range(calls):
        started = time.perf_counter()
        feed = encode_records([record], loaded.manifest.inputs)
        result = model.predict_feed(feed)
        middle = time.perf_counter()
        counter.observe(feed, result.labels, middle - started)
        count.append(time.perf_counter() - middle)
        predict.append(middle - started)
    p, c = statistics.median(predict) * 1e6, statistics.median(count) * 1e6
    print("\nIn-process, one record (medians)")
    print(f"{'schema check + onnxruntime':<46} {p:>9.1f} µs")
    print(f"{'window counter (bins, categories, latency)':<46} {c:>9.1f} µs  = {100 * c / p:.1f}% of the prediction")


def outbox_throughput(work: Path, messages: int) -> None:
    broker = start_broker(work / "outbox-broker")
    assert broker is not None
    port = broker[1]
    payload = orjson.dumps({"seq": 0, "pad": "x" * 180})
    try:
        outbox = Outbox(work / "bench-outbox.db", max_messages=messages * 2)
        started = time.perf_counter()
        for _ in range(messages):
            outbox.append("telemetry", "bench/t", lambda seq: payload)
        persist = messages / (time.perf_counter() - started)

        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-outbox")
        publisher = OutboxPublisher(outbox, client, max_inflight=100)
        connected = threading.Event()

        def on_connect(*_args: object) -> None:
            publisher.on_connected()
            connected.set()

        client.on_connect = on_connect
        client.on_publish = lambda c, u, mid, rc, p: publisher.on_published(mid)
        client.connect("127.0.0.1", port)
        client.loop_start()
        connected.wait(10)
        started = time.perf_counter()
        publisher.start()
        while outbox.size():
            time.sleep(0.01)
        drain = messages / (time.perf_counter() - started)
        publisher.stop()
        client.loop_stop()

        anchor = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-anchor")
        anchor.connect("127.0.0.1", port)
        anchor.loop_start()
        started = time.perf_counter()
        infos = [anchor.publish("bench/a", payload, qos=1) for _ in range(min(messages, 60_000))]
        for info in infos:
            info.wait_for_publish(30)
        raw = len(infos) / (time.perf_counter() - started)
        anchor.loop_stop()
    finally:
        broker[0].terminate()
        broker[0].wait(10)
    print(f"\nOutbox ({messages} messages of {len(payload)} bytes)")
    print(f"{'persist (SQLite WAL, FULL sync, 1 txn each)':<46} {persist:>9.0f} msg/s")
    print(f"{'drain to broker, QoS 1, delete on PUBACK':<46} {drain:>9.0f} msg/s")
    print(f"{'anchor: paho QoS 1 publish loop (memory only)':<46} {raw:>9.0f} msg/s  drain/anchor {drain / raw:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--messages", type=int, default=20_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgeloop-bench-telemetry-") as tmp:
        work = Path(tmp)
        (work / "outbox-broker").mkdir()
        bundle = args.bundle or build_model(work)[0]
        in_process_overhead(bundle)
        rest_overhead(work, bundle, args.duration, args.rounds)
        outbox_throughput(work, args.messages)


if __name__ == "__main__":
    main()
