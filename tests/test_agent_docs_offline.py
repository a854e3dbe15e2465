"""The agent's /docs renders with no network: Swagger UI's files come from the agent itself (contracts/docs_ui.py).
Headless Chromium (Debian's, driven by Playwright) loads the page of a real agent on uvicorn while every request
that is not to the agent is aborted and recorded; the page must show the API with no request leaving."""

from __future__ import annotations

import gzip
from collections.abc import Iterator

import httpx
import pytest

from contracts.docs_ui import ASSETS, STATIC
from tests.agent_helpers import AgentServer
from tests.conftest import TrainedBundle
from tests.docs_browser import CHROMIUM, HAS_CHROMIUM, render_docs_offline


@pytest.fixture(scope="module")
def agent(rf_bundle: TrainedBundle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentServer]:
    server = AgentServer(
        state_dir=tmp_path_factory.mktemp("agent-docs"),
        bundle=rf_bundle.bundle,
        public_key=rf_bundle.public_key,
        token="docs-token",
    )
    yield server
    server.stop()


def test_the_docs_page_and_its_assets_are_served_by_the_agent(agent: AgentServer) -> None:
    page = httpx.get(f"{agent.url}/docs")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "/docs/assets/swagger-ui-bundle.js" in page.text and "/openapi.json" in page.text
    assert "cdn" not in page.text.lower() and "https://" not in page.text, page.text
    assert '"validatorUrl": null' in page.text  # Swagger UI's online validator would call validator.swagger.io
    for name, media_type in ASSETS.items():
        packed = STATIC / f"{name}.gz"
        raw = gzip.decompress(packed.read_bytes()) if packed.is_file() else (STATIC / name).read_bytes()
        zipped = httpx.get(f"{agent.url}/docs/assets/{name}", headers={"Accept-Encoding": "gzip"})
        assert zipped.status_code == 200 and zipped.content == raw, name  # httpx decodes Content-Encoding
        assert zipped.headers["content-type"].split(";")[0] == media_type.split(";")[0]
        plain = httpx.get(f"{agent.url}/docs/assets/{name}", headers={"Accept-Encoding": "identity"})
        assert plain.content == raw and "content-encoding" not in plain.headers, name
    unknown = httpx.get(f"{agent.url}/docs/assets/evil.js")
    assert unknown.status_code == 404 and unknown.headers["content-type"] == "application/problem+json"
    assert httpx.get(f"{agent.url}/redoc").status_code == 404  # ReDoc loads from a CDN: not offered
    assert (STATIC / "LICENSE").is_file() and (STATIC / "NOTICE").is_file()


@pytest.mark.skipif(not HAS_CHROMIUM, reason=f"{CHROMIUM} is missing: apt-get install chromium")
def test_docs_render_in_headless_chromium_with_the_network_blocked(agent: AgentServer) -> None:
    docs = render_docs_offline(agent.url)
    assert "edgeloop agent" in docs.title, docs.title
    assert {"/v1/predict", "/v1/feedback", "/v2/models/{name}/infer", "/invocations"} <= docs.paths, docs.paths
    assert docs.blocked == [], f"the page tried to leave the device: {docs.blocked}"
    assert docs.problems == [], docs.problems
