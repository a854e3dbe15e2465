"""Real parts for the agent tests: a bundle server (http.server in a thread), an MQTT probe (paho client on
the test broker), an agent served by uvicorn in a thread, and desired states built from real bundles."""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import paho.mqtt.client as mqtt
import uvicorn
from paho.mqtt.enums import CallbackAPIVersion

from contracts.manifest import MANIFEST_FILE, MODEL_FILE, SIGNATURE_FILE, Manifest, canonical_bytes
from contracts.messages import DesiredState
from contracts.signing import PRIVATE_KEY_FILE, load_private_key, sign_bytes
from contracts.topics import device_topic, group_desired
from edge_agent.app import Agent
from edge_agent.settings import AgentSettings

__all__ = [
    "AgentServer",
    "BundleServer",
    "MqttProbe",
    "MqttRequester",
    "desired_state",
    "free_port",
    "record_of",
    "resign",
]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def manifest_of(bundle: Path) -> Manifest:
    return Manifest.model_validate(orjson.loads((bundle / MANIFEST_FILE).read_bytes()))


def record_of(bundle: Path, index: int = 0) -> dict[str, Any]:
    """A valid input record: the bundle's golden sample `index`."""
    return dict(manifest_of(bundle).golden_samples[index].inputs)


def resign(manifest: Manifest, keys_dir: Path, **changes: Any) -> tuple[Manifest, str]:
    """A copy of `manifest` with `changes`, signed with the test key: (manifest, signature document)."""
    data = manifest.model_dump(mode="json")
    data.update(changes)
    edited = Manifest.model_validate(data)
    signature = sign_bytes(canonical_bytes(edited), load_private_key(keys_dir / PRIVATE_KEY_FILE))
    return edited, signature.decode()


def desired_state(
    bundle: Path, model_url: str, manifest: Manifest | None = None, signature: str | None = None
) -> DesiredState:
    """The desired state the cloud would publish for `bundle` (or for an edited, re-signed manifest)."""
    manifest = manifest or manifest_of(bundle)
    signature = signature if signature is not None else (bundle / SIGNATURE_FILE).read_text()
    return DesiredState(
        manifest=manifest.model_dump(mode="json"),
        signature=signature,
        model_url=model_url,
        rollout_id=f"test-{manifest.version}",
        issued_at="2026-01-01T00:00:00Z",
    )


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hung up mid-download is expected in these tests, not a traceback on stderr


class BundleServer:
    """Serves files from a directory over HTTP on a free port (the cloud's bundle server stand-in)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        handler = functools.partial(_QuietHandler, directory=str(root))
        self.httpd = _QuietServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def add(self, bundle: Path, name: str, data: bytes | None = None) -> str:
        """Publish the bundle's model.onnx (or `data` instead) as `name`; returns its URL."""
        target = self.root / name
        if data is None:
            shutil.copyfile(bundle / MODEL_FILE, target)
        else:
            target.write_bytes(data)
        return self.url(name)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@dataclass
class MqttProbe:
    """A test client on the broker: publishes desired states, records what the agents publish."""

    host: str
    port: int
    messages: list[tuple[str, bytes, bool]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._cond = threading.Condition()
        # A persistent session that resubscribes on every connection: it survives a broker restart
        # (the test broker persists sessions) and gets what was queued for it meanwhile.
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"probe-{time.monotonic_ns()}", clean_session=False
        )
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.1, 0.5)
        connected = threading.Event()
        subscribed = threading.Event()

        def on_connect(client: mqtt.Client, *_args: Any) -> None:
            client.subscribe("edgeloop/v1/devices/+/+", qos=1)
            connected.set()

        self.client.on_connect = on_connect
        self.client.on_subscribe = lambda *_args: subscribed.set()
        self.client.connect(self.host, self.port)
        self.client.loop_start()
        assert connected.wait(10), "probe cannot connect to the test broker"
        assert subscribed.wait(10), "probe subscription not acknowledged"

    def _on_message(self, _client: Any, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append((message.topic, bytes(message.payload), bool(message.retain)))
            self._cond.notify_all()

    def publish(self, topic: str, payload: bytes, retain: bool = True) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def desire_group(self, group: str, desired: DesiredState | None) -> None:
        self.publish(group_desired(group), desired.model_dump_json().encode() if desired else b"")

    def desire_device(self, device: str, desired: DesiredState | None) -> None:
        self.publish(device_topic(device, "desired"), desired.model_dump_json().encode() if desired else b"")

    def payloads(self, device: str, kind: str) -> list[dict[str, Any]]:
        topic = device_topic(device, kind)
        with self._cond:
            return [orjson.loads(payload) for t, payload, _ in self.messages if t == topic and payload]

    def wait_for(
        self,
        device: str,
        kind: str,
        predicate: Callable[[dict[str, Any]], bool],
        timeout: float = 15.0,
        since: int = 0,
    ) -> dict[str, Any]:
        """The first message of `kind` from `device` (from index `since` on) matching `predicate`; waits."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for item in self.payloads(device, kind)[since:]:
                    if predicate(item):
                        return item
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no matching {kind} from {device}; got {self.payloads(device, kind)}")
                self._cond.wait(remaining)

    def wait_for_all(self, device: str, kind: str, last_seq: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        """Wait until messages with every seq 1..last_seq arrived; returns them all (duplicates included)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                items = self.payloads(device, kind)
                if {item["seq"] for item in items} >= set(range(1, last_seq + 1)):
                    return items
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = sorted({item["seq"] for item in items})
                    raise AssertionError(f"{kind} from {device}: wanted 1..{last_seq}, got {seen}")
                self._cond.wait(remaining)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class Answer:
    topic: str
    payload: Any
    correlation: bytes | None
    content_type: str | None


class MqttRequester:
    """A gateway asking an agent for predictions over MQTT (paho, MQTT 5 or 3.1.1): publishes on the device's
    predict topic with a response topic and correlation data, and collects the answers it reads."""

    def __init__(
        self, host: str, port: int, device: str, *, protocol: int = mqtt.MQTTv5, tls: Any = None,
        user: str | None = None, password: str | None = None, response_topic: str | None = None,
    ) -> None:  # fmt: skip
        self.device = device
        self.response_topic = response_topic or f"edgeloop/v1/devices/{device}/predict/response/{user or 'tester'}"
        self.protocol = protocol
        self.answers: list[Answer] = []
        self._cond = threading.Condition()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"requester-{time.monotonic_ns()}",
                                  protocol=protocol)  # fmt: skip
        if user:
            self.client.username_pw_set(user, password)
        if tls is not None:
            self.client.tls_set(ca_certs=str(tls))
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_args: subscribed.set()
        self.client.connect(host, port)
        self.client.loop_start()
        listen = self.response_topic if protocol == mqtt.MQTTv5 else f"edgeloop/v1/devices/{device}/predict/response"
        self.client.subscribe(listen, qos=1)
        assert subscribed.wait(10), "requester subscription not acknowledged"

    def _on_message(self, _client: Any, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        props = getattr(message, "properties", None)
        answer = Answer(message.topic, orjson.loads(message.payload), getattr(props, "CorrelationData", None),
                        getattr(props, "ContentType", None))  # fmt: skip
        with self._cond:
            self.answers.append(answer)
            self._cond.notify_all()

    def send(self, body: bytes, correlation: bytes | None = None, key: str | None = None) -> None:
        properties = None
        if self.protocol == mqtt.MQTTv5:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            properties = Properties(PacketTypes.PUBLISH)
            properties.ResponseTopic = self.response_topic
            if correlation is not None:
                properties.CorrelationData = correlation
            if key is not None:
                properties.UserProperty = ("X-Request-Key", key)
        topic = f"edgeloop/v1/devices/{self.device}/predict"
        self.client.publish(topic, body, qos=1, properties=properties).wait_for_publish(5)

    def wait(self, count: int, timeout: float = 10.0) -> list[Answer]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.answers) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"{len(self.answers)} answers of {count} after {timeout}s: {self.answers}")
                self._cond.wait(remaining)
            return list(self.answers)

    def ask(self, body: Any, correlation: bytes, timeout: float = 10.0) -> Answer:
        """Send `body` (JSON-encoded unless bytes) and wait for the answer carrying `correlation`."""
        self.send(body if isinstance(body, bytes) else orjson.dumps(body), correlation)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for answer in self.answers:
                    if answer.correlation == correlation:
                        return answer
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no answer with correlation {correlation!r}: {self.answers}")
                self._cond.wait(remaining)

    def wait_ready(self, body: Any, timeout: float = 10.0) -> Answer:
        """Ask until the agent answers (its subscription to the predict topic is in place), then forget answers."""
        deadline = time.monotonic() + timeout
        attempt = 0
        while True:
            attempt += 1
            try:
                answer = self.ask(body, f"hello-{attempt}".encode(), timeout=0.5)
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
                continue
            time.sleep(0.6)  # late answers to earlier attempts arrive before the answers are forgotten
            with self._cond:
                self.answers.clear()
            return answer

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class AgentServer:
    """An Agent loaded and served by a real uvicorn in a thread, on a free port."""

    def __init__(self, **settings: Any) -> None:
        settings.setdefault("port", free_port())
        settings.setdefault("download_backoff_s", 0.05)
        settings.setdefault("download_retries", 1)
        settings.setdefault("download_timeout_s", 5.0)
        settings.setdefault("mqtt_reconnect_min_s", 0.2)
        settings.setdefault("mqtt_reconnect_max_s", 1.0)
        self.settings = AgentSettings(**settings)
        self.agent = Agent(self.settings)
        try:
            self.agent.load()
        except BaseException:
            self.agent.stop()
            raise
        config = uvicorn.Config(
            self.agent.create_app(), host="127.0.0.1", port=self.settings.port, log_config=None,
            log_level="warning", access_log=False,
        )  # fmt: skip
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        self.url = f"http://127.0.0.1:{self.settings.port}"
        headers = {"Authorization": f"Bearer {self.settings.token}"} if self.settings.token else {}
        self.client = httpx.Client(base_url=self.url, headers=headers, timeout=10)

    def predict(self, payload: Any) -> httpx.Response:
        return self.client.post("/v1/predict", json=payload)

    def version(self) -> int | None:
        current = self.agent.service.current
        return current.manifest.version if current else None

    def wait_version(self, version: int, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while self.version() != version:
            if time.monotonic() > deadline:
                raise AssertionError(f"agent serves v{self.version()}, expected v{version}")
            time.sleep(0.02)

    def stop(self) -> None:
        self.client.close()
        self.server.should_exit = True
        self.thread.join(15)


if os.environ.get("EDGELOOP_DEVICE_PYTHON"):  # the device install profile (make check-edge): agents are processes
    from tests.device_helpers import ProcessAgentServer as AgentServer  # type: ignore[assignment]
