"""The cloud's /docs renders with no network, like the agent's: Swagger UI's files come from `edgeloop cloud`
itself (contracts/docs_ui.py, the same vendored files), not from a CDN. A real cloud app on uvicorn; headless
Chromium with every request that is not to the cloud aborted and recorded."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from cloud_sync.api.app import create_app
from cloud_sync.api.context import CloudContext
from cloud_sync.ingest.publisher import MqttPublisher
from cloud_sync.rollouts.controller import Rollouts
from cloud_sync.store.bundles import BundleRegistry
from contracts.docs_ui import ASSETS
from contracts.signing import load_public_key
from tests.agent_helpers import free_port
from tests.cloud_support import make_store, wait_until
from tests.conftest import Broker, TrainedBundle
from tests.docs_browser import CHROMIUM, HAS_CHROMIUM, render_docs_offline


@pytest.fixture()
def cloud_url(broker: Broker, tmp_path: Path, rf_bundle: TrainedBundle) -> Iterator[str]:
    with make_store("sqlite", tmp_path) as store:
        registry = BundleRegistry(tmp_path / "bundles", load_public_key(rf_bundle.public_key))
        publisher = MqttPublisher(broker.url, client_id="docs-test").start()
        rollouts = Rollouts(store, registry, publisher, base_url="http://127.0.0.1:9", keys_dir=rf_bundle.keys_dir)
        app = create_app(CloudContext(store, registry, rollouts, ["carol:look"], ["alice:act"]))
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        wait_until(lambda: server.started, timeout=20, what="cloud listening")
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
            thread.join(10)
            publisher.stop()


def test_the_cloud_serves_its_own_swagger_ui(cloud_url: str) -> None:
    page = httpx.get(f"{cloud_url}/docs")
    assert page.status_code == 200 and "/docs/assets/swagger-ui-bundle.js" in page.text
    assert "cdn" not in page.text.lower() and "https://" not in page.text, page.text
    for name in ASSETS:
        assert httpx.get(f"{cloud_url}/docs/assets/{name}").status_code == 200, name
    assert httpx.get(f"{cloud_url}/redoc").status_code == 404  # ReDoc loads from a CDN: not offered


@pytest.mark.skipif(not HAS_CHROMIUM, reason=f"{CHROMIUM} is missing: apt-get install chromium")
def test_cloud_docs_render_in_headless_chromium_with_the_network_blocked(cloud_url: str) -> None:
    docs = render_docs_offline(cloud_url)
    assert "edgeloop cloud" in docs.title, docs.title
    assert {"/v1/devices", "/v1/rollouts", "/v1/alerts"} <= docs.paths, docs.paths
    assert docs.blocked == [], f"the page tried to leave the plant network: {docs.blocked}"
    assert docs.problems == [], docs.problems
