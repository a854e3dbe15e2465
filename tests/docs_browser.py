"""A REST API's /docs page in headless Chromium (Debian's, driven by Playwright) with the network blocked: every
request that is not to the server under test is aborted and recorded. Shared by the agent's and the cloud's
offline-docs tests (contracts/docs_ui.py serves both pages)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["CHROMIUM", "HAS_CHROMIUM", "RenderedDocs", "render_docs_offline"]

CHROMIUM = "/usr/bin/chromium"
HAS_CHROMIUM = os.path.exists(CHROMIUM)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]  # fmt: skip


@dataclass
class RenderedDocs:
    title: str
    """Swagger UI's title of the API (from /openapi.json)."""
    paths: set[str]
    """The operations' paths shown on the page."""
    blocked: list[str]
    """Requests that tried to leave the server (aborted)."""
    problems: list[str]
    """Page errors and console errors."""


def render_docs_offline(base_url: str) -> RenderedDocs:
    from playwright.sync_api import sync_playwright

    local = urlsplit(base_url).netloc
    blocked: list[str] = []
    problems: list[str] = []

    def only_the_server(route: object) -> None:
        request = route.request  # type: ignore[attr-defined]
        if urlsplit(request.url).netloc == local or request.url.startswith("data:"):
            route.continue_()  # type: ignore[attr-defined]
        else:
            blocked.append(request.url)
            route.abort()  # type: ignore[attr-defined]

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.route("**/*", only_the_server)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("console", lambda m: problems.append(f"console: {m.text}") if m.type == "error" else None)
            page.goto(f"{base_url}/docs", wait_until="networkidle")
            page.wait_for_selector(".swagger-ui .info .title", timeout=20_000)
            title = page.inner_text(".swagger-ui .info .title")
            paths = page.locator(".opblock-summary-path").all_inner_texts()
        finally:
            browser.close()
    return RenderedDocs(title, {path.replace("\u200b", "").strip() for path in paths}, blocked, problems)
