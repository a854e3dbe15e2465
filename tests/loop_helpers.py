"""Real parts for the closing-the-loop tests: the cloud's real API (create_app on a SQLite store, a bundle
registry and an MQTT publisher on the test broker) served by uvicorn in a thread, and a deliberately slow
HTTP server (the cloud answering too late)."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn

from cloud_sync.api.app import create_app
from cloud_sync.api.context import CloudContext
from cloud_sync.ingest.publisher import MqttPublisher
from cloud_sync.rollouts.checks import Limits
from cloud_sync.rollouts.controller import Rollouts
from cloud_sync.signing_keys import KeyRotation
from cloud_sync.store.bundles import BundleRegistry
from contracts.signing import load_public_key
from tests.agent_helpers import free_port
from tests.cloud_support import make_store
from tests.conftest import Broker, TrainedBundle

__all__ = ["CloudServer", "slow_server", "start_ingest"]


class CloudServer:
    """The cloud API with bundles registered, on a free port. With `keys_dir`, the cloud signs with and
    rotates the keys there (GET /v1/keys, POST /v1/keys/rotate|retire) instead of `trained`'s; `limits` are the
    rollout controller's (default `Limits()`)."""

    def __init__(
        self,
        broker: Broker,
        tmp_path: Path,
        trained: TrainedBundle,
        bundles: list[Path],
        keys_dir: Path | None = None,
        limits: Limits | None = None,
        **ctx: Any,
    ) -> None:
        self._store_cm = make_store("sqlite", tmp_path)
        self.store = self._store_cm.__enter__()
        self.registry = (
            BundleRegistry(tmp_path / "cloud-bundles", keys_dir=keys_dir)
            if keys_dir is not None
            else BundleRegistry(tmp_path / "cloud-bundles", load_public_key(trained.public_key))
        )
        for bundle in bundles:
            self.registry.add(bundle)
        self.publisher = MqttPublisher(broker.url, client_id=f"loop-test-{time.monotonic_ns()}").start()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.rollouts = Rollouts(
            self.store,
            self.registry,
            self.publisher,
            base_url=self.url,
            keys_dir=keys_dir or trained.keys_dir,
            limits=limits,
        )
        if keys_dir is not None:
            ctx["keys"] = KeyRotation(keys_dir, self.store, self.registry, self.publisher)
        self.context = CloudContext(self.store, self.registry, self.rollouts, ["viewer:look"], ["ops:act"], **ctx)
        config = uvicorn.Config(
            create_app(self.context), host="127.0.0.1", port=self.port, log_config=None, log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("cloud did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.publisher.stop()
        self._store_cm.__exit__(None, None, None)


class _Slow(http.server.BaseHTTPRequestHandler):
    delay = 1.0

    def do_POST(self) -> None:
        time.sleep(self.delay)
        body = b'{"model": "x", "version": 1, "predictions": []}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # the client gave up before the slow answer (that is the point): no traceback on stderr


@contextmanager
def slow_server(delay: float) -> Iterator[str]:
    """An HTTP server that answers every POST after `delay` seconds; yields its base URL."""
    handler = type("Slow", (_Slow,), {"delay": delay})
    httpd = _QuietServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def start_ingest(store: Any, broker: Broker) -> Any:
    """The cloud's real MQTT ingest on `store`, connected to the test broker (stop it with .stop())."""
    from cloud_sync.ingest.subscriber import Ingest

    ingest = Ingest(store, broker.url, client_id=f"loop-ingest-{time.monotonic_ns()}")
    ingest.start()
    if not ingest.connected.wait(10):
        ingest.stop()
        raise RuntimeError("ingest did not connect to the test broker")
    return ingest
