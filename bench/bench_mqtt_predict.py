"""Inference over MQTT (setting `mqtt_predict`) against REST on the same agent process, one run.

    .venv/bin/python bench/bench_mqtt_predict.py [--bundle DIR] [--seconds 5] [--rounds 3]

One agent process (`python -m edge_agent`, MQTT 5 on a private Mosquitto, telemetry on), one record (the
bundle's first golden sample). Per round, interleaved: S seconds of sequential round trips over MQTT (a paho
MQTT 5 client publishes the record on `.../predict` with a response topic and correlation data and waits for
the answer before the next) and S seconds over REST (`POST /v1/predict`, one keep-alive connection, every round
trip timed). Prints the round trips' p50 / p99 (all rounds) and rates, and MQTT's ratio to REST: the MQTT path
crosses the broker twice and paho's network threads on both sides, REST one loopback socket. Not a test: numbers
depend on the machine and its load (say whether it was shared).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_agent_rest import TOKEN, build_model, free_port, lua, round_trips, start, start_broker

DEVICE = "bench-mqtt"


class Requester:
    """Sequential MQTT 5 request/response: one request in flight, timed from publish to answer."""

    def __init__(self, port: int, no_delay: bool = True) -> None:
        self.answered = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-requester", protocol=mqtt.MQTTv5)
        self.client.on_message = lambda _c, _u, _m: self.answered.set()
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_a: subscribed.set()
        if no_delay:  # as the agent does: the next request must not wait for the broker's delayed ACK
            self.client.on_socket_open = lambda _c, _u, sock: sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.response_topic = f"edgeloop/v1/devices/{DEVICE}/predict/response/bench"
        self.client.subscribe(self.response_topic, qos=1)
        assert subscribed.wait(10), "requester could not subscribe"

    def ask(self, body: bytes, number: int, timeout: float = 5.0) -> None:
        properties = Properties(PacketTypes.PUBLISH)
        properties.ResponseTopic = self.response_topic
        properties.CorrelationData = number.to_bytes(8, "big")
        self.answered.clear()
        self.client.publish(f"edgeloop/v1/devices/{DEVICE}/predict", body, qos=1, properties=properties)
        if not self.answered.wait(timeout):
            raise RuntimeError("no answer over MQTT: is mqtt_predict on?")

    def round_trips(self, body: bytes, seconds: float) -> np.ndarray:
        samples: list[int] = []
        end = time.perf_counter_ns() + int(seconds * 1e9)
        while (started := time.perf_counter_ns()) < end:
            self.ask(body, len(samples))
            samples.append(time.perf_counter_ns() - started)
        return np.array(samples, dtype=np.int64)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, help="a signed bundle (default: train and convert one)")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds of round trips per transport and round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgeloop-bench-mqtt-") as tmp:
        work = Path(tmp)
        bundle = args.bundle or build_model(work)[0]
        broker = start_broker(work)
        assert broker is not None, "mosquitto is needed for this bench"
        manifest = orjson.loads((bundle / "manifest.json").read_bytes())
        body = orjson.dumps(manifest["golden_samples"][0]["inputs"])
        key = bundle.parent / "keys" / "edgeloop-signing.pub"
        port = free_port()
        env = {**os.environ, "EDGELOOP_HOME": str(work / "home"), "EDGELOOP_LOG_LEVEL": "WARNING",
               "EDGELOOP_AGENT_MQTT_PREDICT": "true"}  # fmt: skip
        cmd = [sys.executable, "-m", "edge_agent", "--bundle", str(bundle), "--state-dir", str(work / "agent"),
               "--port", str(port), "--token", TOKEN, "--device-id", DEVICE,
               "--mqtt-url", f"mqtt://127.0.0.1:{broker[1]}",
               *(["--public-key", str(key)] if key.is_file() else [])]  # fmt: skip
        headers = {"Authorization": f"Bearer {TOKEN}"}
        base = f"http://127.0.0.1:{port}"
        server = start("agent", cmd, env, f"{base}/readyz", f"{base}/v1/predict", lua(work / "a.lua", body, headers))
        requester = Requester(broker[1])
        trips: dict[str, list[np.ndarray]] = {"MQTT request/response": [], "REST POST /v1/predict": []}
        try:
            deadline = time.monotonic() + 15
            while True:  # the agent subscribes once connected: ask until it answers
                try:
                    requester.ask(body, 0, timeout=0.5)
                    break
                except RuntimeError:
                    if time.monotonic() > deadline:
                        raise
            requester.round_trips(body, 1.0)  # warm up
            for number in range(args.rounds):
                print(f"round {number + 1}/{args.rounds} ...", flush=True)
                trips["MQTT request/response"].append(requester.round_trips(body, args.seconds))
                trips["REST POST /v1/predict"].append(round_trips(f"{base}/v1/predict", body, headers, args.seconds))
        finally:
            requester.stop()
            server.stop()
            broker[0].terminate()
            broker[0].wait(10)
    load = os.getloadavg()
    print(f"\nRound trips at concurrency 1, same agent process, {args.rounds} interleaved rounds of {args.seconds:g} s"
          f" (load average {load[0]:.1f} / {load[1]:.1f})")  # fmt: skip
    print(f"{'transport':<26} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'requests':>9}")
    figures = {}
    for name, runs in trips.items():
        all_ms = np.concatenate(runs) / 1e6
        p50, p99 = np.percentile(all_ms, [50, 99])
        rate = all_ms.size / (args.rounds * args.seconds)
        figures[name] = (rate, p50, p99)
        print(f"{name:<26} {rate:>8.0f} {p50:>8.3f} {p99:>8.3f} {all_ms.size:>9}")
    mqtt_rate, mqtt_p50, mqtt_p99 = figures["MQTT request/response"]
    rest_rate, rest_p50, rest_p99 = figures["REST POST /v1/predict"]
    ratios = (mqtt_rate / rest_rate, mqtt_p50 / rest_p50, mqtt_p99 / rest_p99)
    print(f"{'MQTT / REST':<26} {ratios[0]:>7.2f}x {ratios[1]:>7.2f}x {ratios[2]:>7.2f}x")


if __name__ == "__main__":
    main()
