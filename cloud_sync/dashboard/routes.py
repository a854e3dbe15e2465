"""The fleet dashboard, served by `edgeloop cloud` on the API's port: `/` (redirects to `/dashboard`).

A static page (HTML + vanilla JS, no build step) that reads the cloud API with the token stored in the
page, charts drawn by Chart.js vendored in `static/` (static/VENDORED.md: version, licence, digest; nothing is
fetched from the internet), and refreshes what changed on server-sent events from `/v1/events/stream`.

    app.include_router(router(ctx, auth))    # the page, its static files, /v1/dashboard/* and the event stream

Reads need a viewer token (when tokens are configured); the page's operator actions (promote, rollback,
acknowledge) call the existing API routes, which need an operator token. EventSource cannot send headers,
so the stream also accepts the token as `?token=`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, RedirectResponse, Response, StreamingResponse

from cloud_sync.api.auth import Auth
from cloud_sync.api.context import CloudContext, Principal
from cloud_sync.api.errors import ERRORS
from cloud_sync.dashboard import queries
from cloud_sync.dashboard.live import LiveHub, sse_stream
from cloud_sync.times import duration
from contracts.errors import InputError, NotFoundError

__all__ = ["CHART_JS_VERSION", "STATIC_DIR", "router"]

STATIC_DIR = Path(__file__).parent / "static"
CHART_JS_VERSION = "4.6.2"  # static/chart.umd.min.js (npm chart.js, MIT)
_STATIC = {"app.js": "text/javascript", "app.css": "text/css", "chart.umd.min.js": "text/javascript"}
_CACHE = {"chart.umd.min.js": "public, max-age=86400"}  # versioned with the package; the page's own files are not
_MAX_PERIOD_S = 31 * 86400


def _seconds(since: str) -> float:
    value = duration(since)
    if not 0 < value <= _MAX_PERIOD_S:
        raise InputError(f"period {since!r} must be between 1s and 31d")
    return value


def router(ctx: CloudContext, auth: Auth) -> APIRouter:
    hub = LiveHub(ctx.store, ctx.ingest_stats)
    as_viewer = Depends(auth.viewer_or_query)
    routes = APIRouter(responses=ERRORS)

    @routes.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/dashboard")

    @routes.get("/dashboard", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers={"Cache-Control": "no-cache"})

    @routes.get("/dashboard/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        if name not in _STATIC:
            raise NotFoundError(f"no dashboard file {name!r}")
        headers = {"Cache-Control": _CACHE.get(name, "no-cache")}
        return FileResponse(STATIC_DIR / name, media_type=_STATIC[name], headers=headers)

    @routes.get("/v1/dashboard/config", tags=["dashboard"])
    def config() -> dict[str, Any]:
        """Open: whether the API wants a token (so the page asks for one before calling anything)."""
        return {"auth_required": auth.required}

    @routes.get("/v1/dashboard/overview", tags=["dashboard"])
    def overview(_p: Principal = as_viewer, group: str | None = None, since: str = "15m") -> dict[str, Any]:
        """Every device with its state and its merged telemetry over the period (rates, p99, drift, accuracy)."""
        return queries.overview(ctx.store, ctx.registry, _seconds(since), group or None, ctx.online_timeout_s)

    @routes.get("/v1/dashboard/devices/{device_id}/series", tags=["dashboard"])
    def series(
        device_id: str, _p: Principal = as_viewer, since: str = "1h", buckets: int = Query(40, ge=2, le=500)
    ) -> dict[str, Any]:
        """Time series of one device: request rate, p50/p99, error rate, accuracy, PSI per feature."""
        return queries.device_series(ctx.store, ctx.registry, device_id, _seconds(since), buckets)

    @routes.get("/v1/dashboard/devices/{device_id}/histograms", tags=["dashboard"])
    def histograms(device_id: str, _p: Principal = as_viewer, since: str = "1h") -> dict[str, Any]:
        """Reference (manifest profile) vs current (merged counts) distribution of every feature."""
        return queries.device_histograms(ctx.store, ctx.registry, device_id, _seconds(since))

    @routes.get("/v1/dashboard/devices/{device_id}/events", tags=["dashboard"])
    def device_events(
        device_id: str, _p: Principal = as_viewer, limit: int = Query(50, ge=1, le=500)
    ) -> list[dict[str, Any]]:
        return queries.device_events(ctx.store, device_id, limit)

    @routes.get("/v1/dashboard/models", tags=["dashboard"])
    def models(_p: Principal = as_viewer, since: str = "24h") -> list[dict[str, Any]]:
        """Model versions: held-out metrics, lineage, card, importance and explanations, devices, live accuracy."""
        return queries.models(ctx.store, ctx.registry, _seconds(since), ctx.online_timeout_s)

    @routes.get("/v1/events/stream", tags=["dashboard"], response_class=StreamingResponse)
    async def stream(request: Request, _p: Principal = as_viewer) -> StreamingResponse:
        """Server-sent events: `change` messages when windows, events, device states, alerts or rollouts change."""
        header = request.headers.get("last-event-id", "")
        last = int(header) if header.isdigit() else None
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        body = sse_stream(hub, request.is_disconnected, last)
        return StreamingResponse(body, media_type="text/event-stream", headers=headers)

    return routes
