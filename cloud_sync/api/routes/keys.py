"""Signing key rotation (docs/cloud.md "Key rotation"): `GET /v1/keys` (viewer), `POST /v1/keys/rotate` and
`POST /v1/keys/retire` (operator). The work is `cloud_sync.signing_keys.KeyRotation`'s; both actions answer with
the signed key set published on `edgeloop/v1/keys`."""

from __future__ import annotations

import dataclasses

from fastapi import APIRouter, Depends

from cloud_sync.api.auth import Auth
from cloud_sync.api.context import CloudContext, Principal
from cloud_sync.api.errors import ERRORS
from cloud_sync.api.models import KeyStatusResponse, ReasonRequest
from cloud_sync.signing_keys import KeyRotation
from contracts.errors import ServiceUnavailableError
from contracts.keyset import KeySetMessage

__all__ = ["router"]


def router(ctx: CloudContext, auth: Auth) -> APIRouter:
    routes = APIRouter(tags=["keys"], responses=ERRORS)

    def rotation() -> KeyRotation:
        if ctx.keys is None:
            raise ServiceUnavailableError("key rotation needs the cloud's keys_dir and broker (edgeloop cloud)")
        return ctx.keys

    @routes.get("/v1/keys", response_model=KeyStatusResponse)
    def keys(*, _p: Principal = Depends(auth.viewer)) -> KeyStatusResponse:
        return KeyStatusResponse(**dataclasses.asdict(rotation().status()))

    @routes.post("/v1/keys/rotate", response_model=KeySetMessage)
    def rotate(*, principal: Principal = Depends(auth.operator), body: ReasonRequest | None = None) -> KeySetMessage:
        """A new signing key; the set [old, new] signed by the old key is published (the overlap starts)."""
        return rotation().rotate(principal.name, body.reason if body else None)

    @routes.post("/v1/keys/retire", response_model=KeySetMessage)
    def retire(*, principal: Principal = Depends(auth.operator), body: ReasonRequest | None = None) -> KeySetMessage:
        """The old key is retired: the set [current], signed by the current key, is published."""
        return rotation().retire(principal.name, body.reason if body else None)

    return routes
