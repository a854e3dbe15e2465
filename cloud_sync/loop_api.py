"""Closing-the-loop routes of the cloud API: retraining jobs are recorded in the audit log.

POST /v1/retrains   (operator) a retraining job that ran: model, new version, run id, trigger, data lineage
GET  /v1/retrains   (viewer)   the retrains recorded, oldest first
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import Depends, FastAPI, Request
from pydantic import BaseModel, Field

from cloud_sync import audit

__all__ = ["RetrainRecord", "mount"]


class RetrainRecord(BaseModel):
    model: str = Field(min_length=1)
    version: int = Field(ge=1)
    run_id: str = Field(min_length=1)
    trigger: str = Field(default="manual", description="manual, schedule or alert:<rule name>")
    data_sha256: str
    feedback_rows: int = Field(default=0, ge=0)
    feedback_sha256: str | None = None
    deploy: str = "wait"
    reason: str | None = None


def mount(app: FastAPI, ctx: Any, as_viewer: Callable[[Request], Any], as_operator: Callable[[Request], Any]) -> None:
    @app.post("/v1/retrains", tags=["retraining"], status_code=201)
    def record_retrain(*, principal: Any = Depends(as_operator), body: RetrainRecord) -> dict[str, Any]:
        """Record a retraining job in the append-only audit log (action `retrain`)."""
        details = body.model_dump(exclude={"reason"})
        with ctx.store.engine.begin() as conn:
            audit.record(conn, principal.name, "retrain", f"{body.model}/{body.version}", body.reason, details)
        return {"recorded": True, "target": f"{body.model}/{body.version}", "actor": principal.name, **details}

    @app.get("/v1/retrains", tags=["retraining"])
    def retrains(*, _p: Any = Depends(as_viewer), model: str | None = None) -> list[dict[str, Any]]:
        rows = audit.entries(ctx.store, action="retrain")
        return [row for row in rows if model is None or row["details"].get("model") == model]
