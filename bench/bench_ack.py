"""Cost of end-to-end acknowledgement (issue 15), on and off in one run.

    .venv/bin/python bench/bench_ack.py [--bundle DIR] [--duration 5] [--rounds 3] [--messages 10000]

1. Outbox drain: the same N real telemetry windows drained through the publisher to a private Mosquitto while
   the cloud's real ingest (SQLite) stores them; off = deleted on the broker's PUBACK, on = kept until the
   cloud's watermark covers them. Messages/s until the outbox is empty.
2. REST: two agents side by side (`EDGELOOP_AGENT_CLOUD_ACK` true / false), 1 s telemetry windows to the same
   broker and ingest, loaded with wrk at concurrency 16 in interleaved rounds (medians).
3. Extra MQTT messages: acknowledgements the ingest published per window it stored, for the drain (a burst)
   and for the agents (one window per second each: the worst case, one acknowledgement per window).
Not a test: numbers depend on the machine and its load (say whether it was shared).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_agent_rest import TOKEN, build_model, free_port, load_rounds, lua, start, start_broker

from cloud_sync.fleet.simulator import make_window
from cloud_sync.ingest.subscriber import Ingest
from cloud_sync.store.db import Store
from contracts.messages import CloudAck
from contracts.topics import device_topic
from edge_agent.cloud_ack import CloudAckTracker
from edge_agent.outbox import Outbox
from edge_agent.publisher import OutboxPublisher


def drain(work: Path, port: int, messages: int, ack: bool) -> tuple[float, float]:
    """(messages/s until the broker PUBACKed them all, messages/s until the outbox is empty)."""
    device = f"bench-drain-{'on' if ack else 'off'}"
    outbox = Outbox(work / f"{device}.db", max_messages=messages * 2)
    end = time.time()

    def build(seq: int) -> bytes:
        window = make_window(device, "bench", seq, end + seq).model_copy(update={"epoch": outbox.epoch})
        return orjson.dumps(window.model_dump(mode="json"))

    for _ in range(messages):
        outbox.append("telemetry", device_topic(device, "telemetry"), build)
    tracker = CloudAckTracker(outbox) if ack else None
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device, protocol=mqtt.MQTTv5)
    publisher = OutboxPublisher(outbox, client, max_inflight=100, acks=tracker)
    connected = threading.Event()

    def on_connect(c: mqtt.Client, *_args: object) -> None:
        c.subscribe(device_topic(device, "ack"), qos=1)
        publisher.on_connected()
        connected.set()

    def on_message(_c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        if tracker is not None and tracker.on_ack(CloudAck.model_validate_json(message.payload)):
            publisher.wake()

    client.on_connect = on_connect
    client.on_message = on_message
    client.on_publish = lambda c, u, mid, rc, p: publisher.on_published(mid, rc.value)
    client.connect("127.0.0.1", port)
    client.loop_start()
    connected.wait(10)
    started = time.perf_counter()
    publisher.start()
    while outbox.unsent():
        time.sleep(0.005)
    pubacked = messages / (time.perf_counter() - started)
    while outbox.size():
        time.sleep(0.005)
    rate = messages / (time.perf_counter() - started)
    publisher.stop()
    client.disconnect()
    client.loop_stop()
    outbox.close()
    return pubacked, rate


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--drain-only", action="store_true", help="skip the REST part (no wrk needed)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgeloop-bench-ack-") as tmp:
        work = Path(tmp)
        bundle = args.bundle or (work if args.drain_only else build_model(work)[0])
        broker = start_broker(work)
        assert broker is not None, "mosquitto is needed for this bench"
        store = Store(f"sqlite:///{work / 'cloud.db'}").create()
        ingest = Ingest(store, f"mqtt://127.0.0.1:{broker[1]}", client_id="bench-ack-ingest", batch=500)
        ingest.start()
        ingest.connected.wait(10)
        servers = []
        try:
            rates: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
            for _ in range(args.rounds):  # interleaved, medians
                for ack in (False, True):
                    rates[ack].append(drain(work, broker[1], args.messages, ack))
            ingest.wait_idle(30)
            assert ingest.acks is not None
            drain_windows, drain_acks = ingest.stats.windows, ingest.acks.published
            print(f"\nOutbox drain, {args.messages} real windows, the cloud's ingest storing them (medians of "
                  f"{args.rounds}): msg/s until the broker PUBACKed all / until the outbox is empty")  # fmt: skip
            for stage, index in (("PUBACKed", 0), ("outbox empty", 1)):
                on = median([r[index] for r in rates[True]])
                off = median([r[index] for r in rates[False]])
                print(f"{stage + ', ack off (delete on PUBACK)':<46} {off:>9.0f} msg/s")
                print(
                    f"{stage + ', ack on (delete when covered)':<46} {on:>9.0f} msg/s  ({100 * (on / off - 1):+.1f}%)"
                )
            print(f"{'acknowledgements per window stored':<44} {drain_acks} / {drain_windows} = "
                  f"{drain_acks / drain_windows:.4f}", flush=True)  # fmt: skip

            if args.drain_only:
                return
            manifest = orjson.loads((bundle / "manifest.json").read_bytes())
            body = orjson.dumps(manifest["golden_samples"][0]["inputs"])
            key = bundle.parent / "keys" / "edgeloop-signing.pub"
            for label, on in (("ack on", "true"), ("ack off", "false")):
                port = free_port()
                env = {**os.environ, "EDGELOOP_HOME": str(work / "home"), "EDGELOOP_LOG_LEVEL": "WARNING",
                       "EDGELOOP_AGENT_CLOUD_ACK": on}  # fmt: skip
                cmd = [sys.executable, "-m", "edge_agent", "--bundle", str(bundle), "--state-dir",
                       str(work / label), "--port", str(port), "--token", TOKEN, "--public-key", str(key),
                       "--device-id", label.replace(" ", "-"), "--mqtt-url", f"mqtt://127.0.0.1:{broker[1]}",
                       "--telemetry-interval", "1"]  # fmt: skip
                script = lua(work / f"{label.replace(' ', '_')}.lua", body, {"Authorization": f"Bearer {TOKEN}"})
                base = f"http://127.0.0.1:{port}"
                servers.append(start(label, cmd, env, f"{base}/readyz", f"{base}/v1/predict", script))
            windows_before, acks_before = ingest.stats.windows, ingest.acks.published
            load_rounds(servers, [16], args.duration, args.rounds)
            ingest.wait_idle(30)
            rest_windows = ingest.stats.windows - windows_before
            rest_acks = ingest.acks.published - acks_before
        finally:
            for server in servers:
                server.stop()
            ingest.stop()
            broker[0].terminate()
            broker[0].wait(10)

    by_name = {server.result.name: server.result.rates[16] for server in servers}
    print("\nAgent REST at c=16, 1 s telemetry windows (medians, interleaved rounds)")
    for label in ("ack off", "ack on"):
        print(f"{label:<44} {by_name[label][0]:>9.0f} req/s  p99 {by_name[label][2]:.2f} ms")
    print(f"{'  ack on vs off':<44} {100 * (by_name['ack on'][0] / by_name['ack off'][0] - 1):>+8.1f}%")
    print("\nExtra MQTT messages (acknowledgements published per window stored)")
    print(f"{'two agents, one window per second each':<44} {rest_acks:>6} acks / {rest_windows} windows = "
          f"{rest_acks / max(rest_windows, 1):.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
