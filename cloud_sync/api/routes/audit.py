"""`GET /v1/audit` (viewer): the append-only audit log as JSON, JSON lines or CSV."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends
from fastapi.responses import PlainTextResponse

from cloud_sync.api.auth import Auth
from cloud_sync.api.context import CloudContext, Principal
from cloud_sync.api.errors import ERRORS
from cloud_sync.store import audit

__all__ = ["router"]


def router(ctx: CloudContext, auth: Auth) -> APIRouter:
    routes = APIRouter(tags=["audit"], responses=ERRORS)

    @routes.get("/v1/audit", response_model=None)
    def audit_log(
        *,
        _p: Principal = Depends(auth.viewer),
        format: Literal["json", "jsonl", "csv"] = "json",
        action: str | None = None,
    ) -> list[dict[str, Any]] | PlainTextResponse:
        rows = audit.entries(ctx.store, action=action)
        if format == "json":
            return rows
        media = "text/csv" if format == "csv" else "application/x-ndjson"
        return PlainTextResponse(audit.export(rows, format), media_type=media)

    return routes
