"""Fleet routes (viewer): devices, telemetry statistics over a period, gaps, dead letters."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query

from cloud_sync.api.auth import Auth
from cloud_sync.api.context import CloudContext, Principal
from cloud_sync.api.errors import ERRORS
from cloud_sync.api.models import Device
from cloud_sync.fleet import stats as fleet
from cloud_sync.rollouts import selectors
from cloud_sync.times import period

__all__ = ["router"]


def router(ctx: CloudContext, auth: Auth) -> APIRouter:
    routes = APIRouter(tags=["fleet"], responses=ERRORS)

    @routes.get("/v1/devices", response_model=list[Device])
    def devices(
        *,
        _p: Principal = Depends(auth.viewer),
        group: str | None = None,
        selector: str | None = Query(None, description="Only devices whose labels match (`site=graz,hw!=pi3`)"),
    ) -> list[dict[str, Any]]:
        found = fleet.device_list(ctx.store, group, online_timeout_s=ctx.online_timeout_s)
        if selector is None:
            return found
        chosen = selectors.members(found, selector)
        return [device for device in found if device["device_id"] in chosen]

    @routes.get("/v1/fleet/stats")
    def stats(
        *,
        _p: Principal = Depends(auth.viewer),
        group: str | None = None,
        device: str | None = None,
        since: str = Query("1h", description="A duration back from `until` (1h, 30m) or an ISO time"),
        until: str | None = Query(None, description="ISO time; default now"),
        per_device: bool = False,
    ) -> dict[str, Any]:
        start, end = period(since, until)
        return fleet.stats(ctx.store, start, end, ctx.registry, group, device, per_device)

    @routes.get("/v1/gaps")
    def gap_list(
        *, _p: Principal = Depends(auth.viewer), device: str | None = None, include_filled: bool = False
    ) -> list[dict[str, Any]]:
        return fleet.gap_list(ctx.store, device, open_only=not include_filled)

    @routes.get("/v1/dead-letters")
    def dead_letters(*, _p: Principal = Depends(auth.viewer), limit: int = Query(100, ge=1, le=1000)) -> dict[str, Any]:
        return fleet.dead_letter_list(ctx.store, limit)

    return routes
