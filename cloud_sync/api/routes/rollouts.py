"""Rollout routes: list and status (viewer); deploy, promote, roll back (operator, recorded with the token's name)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from cloud_sync.api.auth import Auth
from cloud_sync.api.context import CloudContext, Principal
from cloud_sync.api.errors import ERRORS
from cloud_sync.api.models import DeployRequest, ReasonRequest, Rollout, RolloutStatus
from cloud_sync.rollouts.model import Pacing, RolloutRequest

__all__ = ["router"]


def router(ctx: CloudContext, auth: Auth) -> APIRouter:
    routes = APIRouter(tags=["rollouts"], responses=ERRORS)
    status_model: dict[str, Any] = {"response_model": RolloutStatus, "response_model_exclude_unset": True}

    @routes.get("/v1/rollouts", response_model=list[Rollout])
    def rollout_list(*, _p: Principal = Depends(auth.viewer), group: str | None = None) -> list[dict[str, Any]]:
        return ctx.rollouts.recent(group)

    @routes.get("/v1/rollouts/latest", **status_model)
    def rollout_latest(*, _p: Principal = Depends(auth.viewer), group: str | None = None) -> dict[str, Any]:
        return ctx.rollouts.latest(group)

    @routes.get("/v1/rollouts/{rollout_id}", **status_model)
    def rollout_status(
        *, _p: Principal = Depends(auth.viewer), rollout_id: str, devices: bool = True
    ) -> dict[str, Any]:
        """`devices=false`: counts only (`group_devices`, `on_target`), for polling a large group."""
        return ctx.rollouts.status(rollout_id, per_device=devices)

    @routes.post("/v1/rollouts", status_code=201, **status_model)
    def deploy(*, principal: Principal = Depends(auth.operator), body: DeployRequest) -> dict[str, Any]:
        request = RolloutRequest(
            model_name=body.model_name,
            model_version=body.model_version,
            group=body.group,
            canary=body.canary,
            soak_s=body.soak_minutes * 60,
            mode=body.mode,
            ab_fraction=body.ab_fraction,
            ab_key=body.ab_key,
            selector=body.selector,
            canary_per_label=body.canary_per_label,
            stages=tuple(body.stages or ()),
            pacing=_pacing_of(body),
        )
        return ctx.rollouts.deploy(request, actor=principal.name)

    @routes.post("/v1/rollouts/{rollout_id}/promote", **status_model)
    def promote(
        *, principal: Principal = Depends(auth.operator), rollout_id: str, body: ReasonRequest | None = None
    ) -> dict[str, Any]:
        return ctx.rollouts.promote(rollout_id, actor=principal.name, reason=body.reason if body else None)

    @routes.post("/v1/rollouts/{rollout_id}/rollback", **status_model)
    def rollback(
        *, principal: Principal = Depends(auth.operator), rollout_id: str, body: ReasonRequest | None = None
    ) -> dict[str, Any]:
        return ctx.rollouts.rollback(rollout_id, actor=principal.name, reason=body.reason if body else None)

    return routes


def _pacing_of(body: DeployRequest) -> Pacing | None:
    """The rate limit and abort rule of a deploy request (None when it sets neither)."""
    if body.max_per_minute is None and body.abort_failed_pct is None and body.confirm_timeout_s is None:
        return None
    return Pacing(body.max_per_minute, body.abort_failed_pct, body.abort_min_devices, body.confirm_timeout_s)
