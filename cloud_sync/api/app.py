"""The cloud's REST API (FastAPI, OpenAPI docs at /docs) and the bundle server on the same port, assembled once.

Every route module exports `router(ctx, auth) -> APIRouter`; `create_app` includes them in order. Roles and
tokens are checked by `api/auth.py`, errors answered as RFC 9457 problems by `api/errors.py`.

    app = create_app(CloudContext(store, registry, rollouts, viewer_tokens, operator_tokens))

Roles: a viewer token reads (devices, fleet stats, gaps, dead letters, rollouts, alerts, audit, bundles);
an operator token also acts (upload a bundle, deploy, promote, roll back, acknowledge an alert). No token
-> 401, a viewer token on an operator route -> 403. With no token configured at all, the API is open (a
warning is logged). `/bundles/...` (device downloads), `/healthz`, `/readyz` and `/metrics` need no token.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from cloud_sync.api.auth import Auth
from cloud_sync.api.context import CloudContext
from cloud_sync.api.errors import BodyLimit, install_error_handlers
from cloud_sync.api.routes import alerts, audit, bundles, fleet, keys, loop, metrics, rollouts, scoring, service
from cloud_sync.dashboard import routes as dashboard
from contracts.docs_ui import install_docs

__all__ = ["create_app"]

ROUTES = (bundles, service, metrics, fleet, rollouts, alerts, audit, scoring, loop, keys, dashboard)
"""The route modules, in the order their routes are matched."""


def create_app(ctx: CloudContext, lifespan: Any = None) -> FastAPI:
    app = FastAPI(
        title="edgeloop cloud",
        version="v1",
        description="Bundle server, staged rollouts, fleet telemetry, alerts and audit. Every error is an RFC 9457 "
        "problem (application/problem+json: type, title, status, detail, field).",
        lifespan=lifespan,
        docs_url=None,  # /docs is contracts/docs_ui.py's: Swagger UI from our own files, not a CDN (offline plants)
        redoc_url=None,  # ReDoc loads from a CDN: not offered
    )
    install_docs(app)
    app.add_middleware(BodyLimit, limit=ctx.max_body_bytes)
    install_error_handlers(app)
    auth = Auth(ctx)
    for module in ROUTES:
        app.include_router(module.router(ctx, auth))
    return app
