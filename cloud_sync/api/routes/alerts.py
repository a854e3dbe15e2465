"""Alert routes: the list (viewer) and acknowledging one (operator, recorded in the audit log)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Path

from cloud_sync.alerts.queries import acknowledge, alert_list
from cloud_sync.api.auth import Auth
from cloud_sync.api.context import CloudContext, Principal
from cloud_sync.api.errors import ERRORS
from cloud_sync.api.models import Alert, ReasonRequest

__all__ = ["router"]


def router(ctx: CloudContext, auth: Auth) -> APIRouter:
    routes = APIRouter(tags=["alerts"], responses=ERRORS)

    @routes.get("/v1/alerts", response_model=list[Alert])
    def alerts(
        *, _p: Principal = Depends(auth.viewer), state: Literal["firing", "resolved"] | None = None
    ) -> list[dict[str, Any]]:
        return alert_list(ctx.store, state)

    @routes.post("/v1/alerts/{alert_id}/acknowledge", response_model=Alert)
    def ack(
        *,
        principal: Principal = Depends(auth.operator),
        alert_id: int = Path(ge=1, le=2**63 - 1),  # a 64-bit row id: larger ones are a 422, not an overflow
        body: ReasonRequest | None = None,
    ) -> dict[str, Any]:
        return acknowledge(ctx.store, alert_id, principal.name, note=body.reason if body else None)

    return routes
