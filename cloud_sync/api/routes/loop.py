"""Closing-the-loop routes of the cloud API: retraining jobs are recorded in the audit log; business impact.

POST /v1/retrains   (operator) a retraining job that ran: model, new version, run id, trigger, data lineage
GET  /v1/retrains   (viewer)   the retrains recorded, oldest first
GET  /v1/impact     (viewer)   estimated value per version, per period and per rollout (cloud_sync.loop.impact)
GET  /v1/feedback-rows (operator) labelled rows devices sent (opt-in), the newest `limit`, for retraining
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from cloud_sync import times
from cloud_sync.api.auth import Auth
from cloud_sync.api.context import CloudContext, Principal
from cloud_sync.api.errors import ERRORS
from cloud_sync.loop.feedback_rows import rows_for
from cloud_sync.loop.impact import impact
from cloud_sync.store import audit
from contracts.errors import InputError, NotFoundError

__all__ = ["Mixture", "MixturePart", "RetrainRecord", "router"]


class MixturePart(BaseModel):
    source: str
    received: int = Field(ge=0)
    kept: int = Field(ge=0)
    share: float = Field(ge=0, le=1)


class Mixture(BaseModel):
    """What the training data was made of: the original rows and each device's feedback rows (capped)."""

    max_device_share: float | None = None
    cap_rows: int | None = None
    parts: list[MixturePart] = Field(default_factory=list)


class RetrainRecord(BaseModel):
    model: str = Field(min_length=1)
    version: int = Field(ge=1, le=2**63 - 1)  # stored as a 64-bit integer: larger is a 422, not a 500
    run_id: str = Field(min_length=1)
    trigger: str = Field(default="manual", description="manual, schedule or alert:<rule name>")
    data_sha256: str
    feedback_rows: int = Field(default=0, ge=0, le=2**63 - 1)
    feedback_sha256: str | None = None
    mixture: Mixture | None = None
    deploy: str = "wait"
    reason: str | None = None


def router(ctx: CloudContext, auth: Auth) -> APIRouter:
    routes = APIRouter(responses=ERRORS)

    @routes.post("/v1/retrains", tags=["retraining"], status_code=201)
    def record_retrain(*, principal: Principal = Depends(auth.operator), body: RetrainRecord) -> dict[str, Any]:
        """Record a retraining job in the append-only audit log (action `retrain`)."""
        details = body.model_dump(exclude={"reason"})
        with ctx.store.engine.begin() as conn:
            target = f"{body.model}/{body.version}"
            audit.record(conn, principal.name, "retrain", target=target, reason=body.reason, details=details)
        return {"recorded": True, "target": f"{body.model}/{body.version}", "actor": principal.name, **details}

    @routes.get("/v1/retrains", tags=["retraining"])
    def retrains(*, _p: Principal = Depends(auth.viewer), model: str | None = None) -> list[dict[str, Any]]:
        rows = audit.entries(ctx.store, action="retrain")
        return [row for row in rows if model is None or row["details"].get("model") == model]

    @routes.get("/v1/impact/models", tags=["impact"])
    def impact_models(*, _p: Principal = Depends(auth.viewer)) -> list[str]:
        """Models that have a cost/benefit matrix (the others have no /v1/impact)."""
        return sorted(ctx.value_matrices)

    @routes.get("/v1/impact", tags=["impact"])
    def business_impact(
        *,
        _p: Principal = Depends(auth.viewer),
        model: str,
        group: str | None = None,
        since: str = Query("7d", description="A duration back from `until` (7d, 24h) or an ISO time"),
        until: str | None = Query(None, description="ISO time; default now"),
        period: str = Query("1d", description="Length of each period bucket (1h, 1d)"),
        compare: str = Query("24h", description="How long before and after a rollout to compare"),
    ) -> dict[str, Any]:
        """Estimated business value from the merged feedback confusion counts and the model's cost/benefit
        matrix: per version, per period, and the change each rollout made against the version before."""
        matrix = ctx.value_matrices.get(model)
        if matrix is None:
            raise NotFoundError(f"model {model!r} has no cost/benefit matrix (setting value_matrices, docs/loop.md)")
        start, end = times.period(since, until)
        period_s, compare_s = times.duration(period), times.duration(compare)
        if period_s <= 0 or (end - start) / period_s > 1000:
            raise InputError(f"period {period!r} is too short for the range (at most 1000 buckets)")
        return impact(ctx.store, model, matrix, start, end, period_s, group, compare_s)

    @routes.get("/v1/feedback-rows", tags=["retraining"])
    def feedback_row_list(
        *,
        _p: Principal = Depends(auth.operator),
        model: str,
        version: int | None = Query(None, ge=1, le=2**63 - 1),
        group: str | None = None,
        limit: int = Query(50_000, ge=1, le=1_000_000),
    ) -> dict[str, Any]:
        """Labelled rows with the fields devices kept (operator: this is data, not statistics)."""
        rows = rows_for(ctx.store, model, limit, version, group)
        return {"model": model, "count": len(rows), "rows": rows}

    return routes
