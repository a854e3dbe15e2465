"""Each default alert rule fires and resolves; firings are stored, published on MQTT and POSTed to a webhook."""

from __future__ import annotations

import http.server
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cloud_sync.alerts.evaluator import AlertEvaluator
from cloud_sync.alerts.queries import acknowledge, alert_list
from cloud_sync.alerts.rules import load_rules
from cloud_sync.fleet.simulator import iso_utc, make_window
from cloud_sync.ingest.publisher import MqttPublisher
from cloud_sync.ingest.writer import Incoming, IngestWriter
from cloud_sync.store.bundles import BundleRegistry
from cloud_sync.store.db import Store, rollouts
from contracts.errors import InputError
from contracts.messages import DeviceStatus
from contracts.signing import load_public_key
from contracts.telemetry import TelemetryWindow
from contracts.topics import device_topic
from tests.cloud_support import make_store, wait_until
from tests.conftest import Broker, TrainedBundle


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    with make_store(request.param, tmp_path) as instance:
        yield instance


class Webhook:
    def __init__(self) -> None:
        self.received: list[dict] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                outer.received.append(orjson.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_every_default_rule_fires_and_resolves(
    store: Store, broker: Broker, rf_bundle: TrainedBundle, tmp_path: Path
) -> None:
    registry = BundleRegistry(tmp_path / "bundles", load_public_key(rf_bundle.public_key))
    manifest = registry.add(rf_bundle.bundle).manifest
    writer = IngestWriter(store)
    t0 = time.time()

    def send(window: TelemetryWindow, at: float) -> None:
        topic = device_topic(window.device_id, "telemetry")
        writer.write([Incoming(topic, window.model_dump_json().encode(), at)])

    def status(device: str, online: bool, at: float) -> None:
        message = DeviceStatus(device_id=device, online=online, at=iso_utc(at)).model_dump_json().encode()
        writer.write([Incoming(device_topic(device, "status"), message, at)])

    # Five devices, each breaching one telemetry rule (all other values healthy), plus one going offline.
    common = {"manifest": manifest, "requests": 200, "feedback": 100, "accuracy": 0.9}
    send(make_window("d-acc", "g", 1, t0 - 300, **common | {"accuracy": 0.6}), t0 - 300)  # type: ignore[arg-type]
    send(make_window("d-drift", "g", 1, t0 - 300, shift=0.8, **common), t0 - 300)  # type: ignore[arg-type]
    send(make_window("d-slow", "g", 1, t0 - 60, latency_s=0.6, **common), t0 - 60)  # type: ignore[arg-type]
    send(make_window("d-err", "g", 1, t0 - 60, errors=30, **common), t0 - 60)  # type: ignore[arg-type]
    status("d-off", True, t0 - 1000)
    status("d-off", False, t0 - 700)
    with store.begin() as conn:
        conn.execute(
            rollouts.insert().values(
                id="r-bad",
                group_name="g",
                model_name="m",
                model_version=2,
                previous_version=1,
                canary=["d-acc"],
                soak_s=60,
                state="rolled_back",
                reason="canary device d-acc rejected m/2",
                actor="alice",
                created_at=t0 - 100,
                finished_at=t0 - 90,
            )
        )

    seen: list[tuple[str, dict]] = []
    listener = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"alerts-{uuid.uuid4().hex[:6]}")
    listener.on_message = lambda _c, _u, m: seen.append((m.topic, orjson.loads(m.payload)))
    listener.connect(broker.host, broker.port)
    listener.subscribe("edgeloop/v1/alerts/#", qos=1)
    listener.loop_start()
    publisher = MqttPublisher(broker.url, client_id="alerts-publisher").start()
    webhook = Webhook()
    evaluator = AlertEvaluator(
        store, registry, load_rules(None), lambda t, b: publisher.publish(t, b), webhook.url, online_timeout_s=120
    )
    try:
        first = {(c["rule"], c["subject"]) for c in evaluator.evaluate(now=t0)}
        # Rules without `for` fire at once; accuracy (10 min), p99 and error rate (5 min) are pending.
        assert first == {
            ("device-offline", "d-off"),
            ("rollout-failed", "r-bad"),
            *{("feature-drift", f"d-drift/{name}") for name in _drifted(alert_list(store))},
        }
        assert any(subject.startswith("d-drift/") for _, subject in first)
        assert not any(subject.startswith(("d-acc", "d-slow", "d-err")) for _, subject in first)
        for device in ("d-acc", "d-drift", "d-slow", "d-err"):  # they stay connected (no offline alert)
            status(device, True, t0 + 590)
        later = {(c["rule"], c["subject"], c["state"]) for c in evaluator.evaluate(now=t0 + 601)}
        assert later == {
            ("accuracy-low", "d-acc", "firing"),
            ("latency-p99-high", "d-slow", "firing"),
            ("error-rate-high", "d-err", "firing"),
        }
        firing = {(a["rule"], a["subject"].split("/")[0]) for a in alert_list(store, "firing")}
        assert {rule for rule, _ in firing} == {
            "accuracy-low",
            "feature-drift",
            "device-offline",
            "latency-p99-high",
            "error-rate-high",
            "rollout-failed",
        }
        # Recovery: good windows, the device comes back, a later rollout in the group is promoted.
        for seq, device in enumerate(["d-acc", "d-slow", "d-err"], start=2):
            send(
                make_window(
                    device, "g", seq, t0 + 610, manifest=manifest, requests=30000, feedback=1000, accuracy=0.99
                ),
                t0 + 610,
            )
        status("d-off", True, t0 + 610)
        with store.begin() as conn:
            conn.execute(
                rollouts.insert().values(
                    id="r-good",
                    group_name="g",
                    model_name="m",
                    model_version=3,
                    previous_version=1,
                    canary=[],
                    soak_s=0,
                    state="promoted",
                    actor="alice",
                    created_at=t0 + 600,
                    finished_at=t0 + 601,
                )
            )
        resolved = evaluator.evaluate(now=t0 + 620)
        assert {c["rule"] for c in resolved if c["state"] == "resolved"} == {
            "accuracy-low",
            "latency-p99-high",
            "error-rate-high",
            "device-offline",
            "rollout-failed",
        }
        for device in ("d-acc", "d-drift", "d-slow", "d-err", "d-off"):
            status(device, True, t0 + 3690)
        gone = {c["rule"] for c in evaluator.evaluate(now=t0 + 3700)}  # the drifted window left the hour
        assert gone == {"feature-drift"}
        assert alert_list(store, "firing") == []
        # Stored, published (retained, one topic per rule and subject) and POSTed.
        assert len(alert_list(store)) == len([a for a in alert_list(store) if a["resolved_at"]])
        wait_until(lambda: len(webhook.received) == 2 * len(alert_list(store)), what="webhook calls")
        wait_until(lambda: len(seen) == 2 * len(alert_list(store)), what="MQTT alert messages")
        topics = {topic for topic, _ in seen}
        assert "edgeloop/v1/alerts/device-offline/d-off" in topics
        assert {payload["state"] for _, payload in seen} == {"firing", "resolved"}
        acked = acknowledge(store, alert_list(store)[0]["id"], "bob", note="seen it")
        assert acked["acknowledged_by"] == "bob"
    finally:
        listener.loop_stop()
        publisher.stop()
        webhook.server.shutdown()


def _drifted(alerts: list[dict]) -> set[str]:
    return {a["subject"].split("/", 1)[1] for a in alerts if a["rule"] == "feature-drift"}


def test_rules_file_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("rules:\n  - name: slow\n    kind: p99_above\n    threshold: 0.1\n    for: 2m\n    window: 5m\n")
    [rule] = load_rules(path)
    assert (rule.threshold, rule.for_, rule.window) == (0.1, 120.0, 300.0)
    path.write_text("rules:\n  - name: slow\n    kind: p99_abve\n")
    with pytest.raises(InputError, match=r"alert rule 1 \(kind\)"):
        load_rules(path)
    path.write_text("rules:\n  - name: slow\n    kind: p99_above\n    for: soon\n")
    with pytest.raises(InputError, match="not a duration"):
        load_rules(path)
