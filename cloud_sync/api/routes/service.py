"""`GET /healthz`: open, for load balancers and `edgeloop cloud`'s own wait; the ingest's counters."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from cloud_sync.api.auth import Auth
from cloud_sync.api.context import CloudContext

__all__ = ["router"]


def router(ctx: CloudContext, _auth: Auth) -> APIRouter:
    routes = APIRouter(tags=["service"])

    @routes.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "ingest": ctx.ingest_stats.as_dict() if ctx.ingest_stats else None}

    return routes
