"""`POST /v1/score` (viewer): cloud scoring for hybrid inference (`loop/scoring.py` holds the scorer)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from cloud_sync.api.auth import Auth
from cloud_sync.api.context import CloudContext, Principal
from cloud_sync.api.errors import ERRORS
from cloud_sync.loop.scoring import Scorer, ScoreRequest

__all__ = ["router"]


def router(ctx: CloudContext, auth: Auth) -> APIRouter:
    routes = APIRouter(tags=["scoring"], responses=ERRORS)
    scorer = Scorer(ctx.registry, ctx.score_bundles)

    @routes.post("/v1/score")
    def score(*, _p: Principal = Depends(auth.viewer), body: ScoreRequest) -> dict[str, Any]:
        """Score records with the cloud's model for hybrid inference (a device's low-confidence records)."""
        return scorer.score(body)

    return routes
