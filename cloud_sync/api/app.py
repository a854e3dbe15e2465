"""The cloud's REST API (FastAPI, OpenAPI docs at /docs) and the bundle server on the same port.

Roles: a viewer token reads (devices, fleet stats, gaps, dead letters, rollouts, alerts, audit, bundles);
an operator token also acts (upload a bundle, deploy, promote, roll back, acknowledge an alert). No token
-> 401, a viewer token on an operator route -> 403. Tokens may be written `name:token`; the name is the
actor recorded in the audit log. With no token configured at all, the API is open (a warning is logged).
`/bundles/...` (device downloads) and `/healthz` need no token.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, Field

from cloud_sync.alerts.evaluator import acknowledge, alert_list, parse_duration
from cloud_sync.fleet import stats as fleet
from cloud_sync.ingest.subscriber import IngestStats
from cloud_sync.rollouts.controller import Rollouts
from cloud_sync.store import audit
from cloud_sync.store.bundles import BundleRegistry, bundle_router
from cloud_sync.store.db import Store
from contracts.errors import EdgeloopError, InputError

__all__ = ["CloudContext", "Principal", "create_app"]

Role = Literal["viewer", "operator"]


@dataclass(frozen=True)
class Principal:
    name: str
    role: Role


@dataclass
class CloudContext:
    store: Store
    registry: BundleRegistry
    rollouts: Rollouts
    viewer_tokens: list[str]
    operator_tokens: list[str]
    online_timeout_s: float = 120.0
    ingest_stats: IngestStats | None = None
    score_bundles: dict[str, str] = field(default_factory=dict)
    """Hybrid inference: model name -> NAME or NAME/VERSION of the bundle POST /v1/score answers with."""
    value_matrices: dict[str, Any] = field(default_factory=dict)
    """Business impact: model name -> `cloud_sync.loop.impact.ValueMatrix` (GET /v1/impact)."""
    max_body_bytes: int = 256 * 2**20
    """Largest request body (a bundle upload is the largest); over it -> 413 before it is all read."""


class _BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body is over the limit of {limit} bytes (max_body_bytes)")


class _BodyLimit:
    """ASGI middleware: 413 for a Content-Length over `limit`, and for a chunked body once it passes it."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await self._refuse(send, 413 if length.isdigit() else 400, "bad or oversized Content-Length")
            return
        seen = 0
        started = False

        async def limited_receive() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _BodyTooLarge(self.limit)
            return message

        async def tracking_send(message: Any) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge as exc:
            if started:
                raise
            await self._refuse(send, 413, str(exc.detail))

    async def _refuse(self, send: Any, status: int, detail: str) -> None:
        body = JSONResponse({"detail": detail}, status_code=status).body
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": [*headers, (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


class _AuthError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _token_table(ctx: CloudContext) -> dict[str, Principal]:
    table: dict[str, Principal] = {}
    for role, tokens in (("viewer", ctx.viewer_tokens), ("operator", ctx.operator_tokens)):
        for entry in tokens:
            name, _, secret = entry.rpartition(":")
            name = name or f"{role}-{hashlib.sha256(secret.encode()).hexdigest()[:6]}"
            table[secret] = Principal(name, role)  # type: ignore[arg-type]
    return table


def _auth(ctx: CloudContext, needed: Role) -> Callable[[Request], Principal]:
    table = _token_table(ctx)

    def check(request: Request) -> Principal:
        if not table:
            return Principal("anonymous", "operator")
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise _AuthError(401, "missing bearer token: send Authorization: Bearer TOKEN")
        principal = next((p for secret, p in table.items() if hmac.compare_digest(secret, token.strip())), None)
        if principal is None:
            raise _AuthError(401, "unknown token")
        if needed == "operator" and principal.role != "operator":
            raise _AuthError(403, f"token of {principal.name} is a viewer token; this needs an operator token")
        return principal

    return check


def _period(since: str, until: str | None) -> tuple[float, float]:
    end = time.time() if until is None else _when(until)
    try:
        start = end - parse_duration(since)
    except ValueError:
        start = _when(since)
    if start >= end:
        raise InputError(f"the period is empty: since {since} is not before until {until or 'now'}")
    return start, end


def _when(value: str) -> float:
    from cloud_sync.ingest.writer import epoch

    try:
        return epoch(value)
    except ValueError:
        raise InputError(f"{value!r} is neither a duration (1h) nor an ISO 8601 time") from None


class DeployRequest(BaseModel):
    model_name: str = Field(min_length=1)
    model_version: int = Field(ge=1, le=2**63 - 1)
    group: str = Field(min_length=1)
    canary: str | None = Field(default=None, description="`25%` of the group, or `dev-1,dev-2`; `0` = no canary")
    soak_minutes: float = Field(default=10.0, ge=0)
    mode: Literal["serving", "shadow", "ab"] = Field(
        default="serving",
        description="`shadow`: the canary keeps serving the group's version with this one in shadow; promoted "
        "after the soak if its measured accuracy is at least the champion's. `ab`: this one answers `ab_fraction` "
        "of the request keys on the canary (stable hash of the key); status shows per-arm accuracy; promotion "
        "is manual",
    )
    ab_fraction: float | None = Field(
        default=None, ge=0, le=1, description="`ab` mode: the challenger's share of request keys, in [0, 1]"
    )
    ab_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="`ab` mode: the record field that is the request key (e.g. `machine_id`); none = the "
        "`X-Request-Key` header only",
    )


class ReasonRequest(BaseModel):
    reason: str | None = None


def create_app(ctx: CloudContext, lifespan: Any = None) -> FastAPI:
    app = FastAPI(
        title="edgeloop cloud",
        version="v1",
        description="Bundle server, staged rollouts, fleet telemetry, alerts and audit.",
        lifespan=lifespan,
    )
    app.add_middleware(_BodyLimit, limit=ctx.max_body_bytes)
    as_viewer, as_operator = _auth(ctx, "viewer"), _auth(ctx, "operator")

    @app.exception_handler(_AuthError)
    async def _auth_error(_request: Request, exc: _AuthError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else {}
        return JSONResponse({"detail": exc.message}, status_code=exc.status, headers=headers)

    @app.exception_handler(EdgeloopError)
    async def _edgeloop_error(_request: Request, exc: EdgeloopError) -> JSONResponse:
        return JSONResponse({"detail": exc.message}, status_code=exc.http_status)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"] if part != "body") or "request"
        return JSONResponse({"detail": f"{where}: {first['msg']}"}, status_code=422)

    app.include_router(bundle_router(ctx.registry))

    @app.get("/healthz", tags=["service"])
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "ingest": ctx.ingest_stats.as_dict() if ctx.ingest_stats else None}

    @app.get("/v1/devices", tags=["fleet"])
    def devices(*, _p: Principal = Depends(as_viewer), group: str | None = None) -> list[dict[str, Any]]:
        return fleet.device_list(ctx.store, group, online_timeout_s=ctx.online_timeout_s)

    @app.get("/v1/fleet/stats", tags=["fleet"])
    def stats(
        *,
        _p: Principal = Depends(as_viewer),
        group: str | None = None,
        device: str | None = None,
        since: str = Query("1h", description="A duration back from `until` (1h, 30m) or an ISO time"),
        until: str | None = Query(None, description="ISO time; default now"),
        per_device: bool = False,
    ) -> dict[str, Any]:
        start, end = _period(since, until)
        return fleet.stats(ctx.store, start, end, ctx.registry, group, device, per_device)

    @app.get("/v1/gaps", tags=["fleet"])
    def gap_list(
        *, _p: Principal = Depends(as_viewer), device: str | None = None, include_filled: bool = False
    ) -> list[dict[str, Any]]:
        return fleet.gap_list(ctx.store, device, open_only=not include_filled)

    @app.get("/v1/dead-letters", tags=["fleet"])
    def dead_letters(*, _p: Principal = Depends(as_viewer), limit: int = Query(100, ge=1, le=1000)) -> dict[str, Any]:
        return fleet.dead_letter_list(ctx.store, limit)

    @app.get("/v1/bundles", tags=["bundles"])
    def bundles(*, _p: Principal = Depends(as_viewer)) -> list[dict[str, Any]]:
        return [info.summary() for info in ctx.registry.all()]

    @app.put("/v1/bundles", tags=["bundles"], status_code=201)
    async def upload_bundle(*, _p: Principal = Depends(as_operator), request: Request) -> dict[str, Any]:
        """Body: a tar of model.onnx, manifest.json and manifest.sig; verified before it is stored."""
        info = ctx.registry.add_tar(await request.body())
        return info.summary()

    @app.get("/v1/rollouts", tags=["rollouts"])
    def rollout_list(*, _p: Principal = Depends(as_viewer), group: str | None = None) -> list[dict[str, Any]]:
        return ctx.rollouts.recent(group)

    @app.get("/v1/rollouts/latest", tags=["rollouts"])
    def rollout_latest(*, _p: Principal = Depends(as_viewer), group: str | None = None) -> dict[str, Any]:
        return ctx.rollouts.latest(group)

    @app.get("/v1/rollouts/{rollout_id}", tags=["rollouts"])
    def rollout_status(*, _p: Principal = Depends(as_viewer), rollout_id: str, devices: bool = True) -> dict[str, Any]:
        """`devices=false`: counts only (`group_devices`, `on_target`), for polling a large group."""
        return ctx.rollouts.status(rollout_id, per_device=devices)

    @app.post("/v1/rollouts", tags=["rollouts"], status_code=201)
    def deploy(*, principal: Principal = Depends(as_operator), body: DeployRequest) -> dict[str, Any]:
        return ctx.rollouts.deploy(
            body.model_name,
            body.model_version,
            body.group,
            body.canary,
            body.soak_minutes * 60,
            principal.name,
            body.mode,
            body.ab_fraction,
            body.ab_key,
        )

    @app.post("/v1/rollouts/{rollout_id}/promote", tags=["rollouts"])
    def promote(
        *, principal: Principal = Depends(as_operator), rollout_id: str, body: ReasonRequest | None = None
    ) -> dict[str, Any]:
        return ctx.rollouts.promote(rollout_id, principal.name, body.reason if body else None)

    @app.post("/v1/rollouts/{rollout_id}/rollback", tags=["rollouts"])
    def rollback(
        *, principal: Principal = Depends(as_operator), rollout_id: str, body: ReasonRequest | None = None
    ) -> dict[str, Any]:
        return ctx.rollouts.rollback(rollout_id, principal.name, body.reason if body else None)

    @app.get("/v1/alerts", tags=["alerts"])
    def alerts(
        *, _p: Principal = Depends(as_viewer), state: Literal["firing", "resolved"] | None = None
    ) -> list[dict[str, Any]]:
        return alert_list(ctx.store, state)

    @app.post("/v1/alerts/{alert_id}/acknowledge", tags=["alerts"])
    def ack(
        *,
        principal: Principal = Depends(as_operator),
        alert_id: int = Path(ge=1, le=2**63 - 1),  # a 64-bit row id: larger ones are a 422, not an overflow
        body: ReasonRequest | None = None,
    ) -> dict[str, Any]:
        return acknowledge(ctx.store, alert_id, principal.name, body.reason if body else None)

    @app.get("/v1/audit", tags=["audit"], response_model=None)
    def audit_log(
        *,
        _p: Principal = Depends(as_viewer),
        format: Literal["json", "jsonl", "csv"] = "json",
        action: str | None = None,
    ) -> list[dict[str, Any]] | PlainTextResponse:
        rows = audit.entries(ctx.store, action=action)
        if format == "json":
            return rows
        media = "text/csv" if format == "csv" else "application/x-ndjson"
        return PlainTextResponse(audit.export(rows, format), media_type=media)

    from cloud_sync.loop.scoring import Scorer, scoring_router

    app.include_router(scoring_router(Scorer(ctx.registry, ctx.score_bundles), as_viewer))  # POST /v1/score
    __import__("cloud_sync.api.routes.loop", fromlist=["mount"]).mount(app, ctx, as_viewer, as_operator)  # retrains
    __import__("cloud_sync.loop.governance", fromlist=["mount"]).mount(app, ctx, as_viewer)  # importance, explanations
    __import__("cloud_sync.dashboard", fromlist=["mount"]).mount(app, ctx)  # the fleet dashboard at / and /dashboard
    return app
