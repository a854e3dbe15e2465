"""The `/docs` page of both REST APIs (the agent's and `edgeloop cloud`'s) with Swagger UI's files served by the
process itself, so that it renders on a device or a plant network with no internet access (FastAPI's default page
loads them from a CDN: blank offline). One copy of the files, in the package both install (contracts).

The files are swagger-ui-dist 5.36.0 from npm (Apache-2.0; LICENSE, NOTICE and the bundle's third-party
licences sit beside them in contracts/static/swagger-ui/), gzip-compressed: 0.5 MB in the package instead of
2 MB. They are read on the first request (not at start) and answered gzip-encoded, or decompressed for a
client that does not accept gzip. Swagger UI's online validator is off (it would call validator.swagger.io).

    GET /docs                         the Swagger UI page for /openapi.json                  (open)
    GET /docs/assets/{name}           swagger-ui-bundle.js, swagger-ui.css, favicon-32x32.png (open)

To update: `npm pack swagger-ui-dist@VERSION`, then `gzip -9 -n` its swagger-ui-bundle.js and swagger-ui.css
into that folder, copy favicon-32x32.png, LICENSE, NOTICE and swagger-ui-bundle.js.LICENSE.txt, and change
SWAGGER_UI_VERSION.
"""

from __future__ import annotations

import gzip
from functools import cache
from pathlib import Path

from fastapi import FastAPI, Request, Response
from fastapi.openapi.docs import get_swagger_ui_html

from contracts.errors import NotFoundError

__all__ = ["ASSETS", "SWAGGER_UI_VERSION", "install_docs"]

SWAGGER_UI_VERSION = "5.36.0"
STATIC = Path(__file__).resolve().parent / "static" / "swagger-ui"
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon-32x32.png": "image/png",
}
_CACHE = "public, max-age=86400"


@cache
def _compressed(name: str) -> tuple[bytes, bool]:
    """(file bytes, gzip-compressed?) of one asset, read once."""
    packed = STATIC / f"{name}.gz"
    if packed.is_file():
        return packed.read_bytes(), True
    return (STATIC / name).read_bytes(), False


def install_docs(app: FastAPI, openapi_url: str = "/openapi.json") -> None:
    """Serve /docs and its assets; the app must be created with docs_url=None and redoc_url=None."""

    async def docs(_request: Request) -> Response:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} - API docs",
            swagger_js_url="/docs/assets/swagger-ui-bundle.js",
            swagger_css_url="/docs/assets/swagger-ui.css",
            swagger_favicon_url="/docs/assets/favicon-32x32.png",
            swagger_ui_parameters={"validatorUrl": None},
        )

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        media_type = ASSETS.get(name)
        if media_type is None:
            raise NotFoundError(f"no docs asset {name!r}: the page uses {', '.join(ASSETS)}")
        data, packed = _compressed(name)
        headers = {"Cache-Control": _CACHE, "Vary": "Accept-Encoding"}
        if packed and "gzip" in request.headers.get("accept-encoding", ""):
            headers["Content-Encoding"] = "gzip"
        elif packed:
            data = gzip.decompress(data)
        return Response(data, headers=headers, media_type=media_type)

    app.add_route("/docs", docs, methods=["GET"], include_in_schema=False)
    app.add_route("/docs/assets/{name}", asset, methods=["GET"], include_in_schema=False)
