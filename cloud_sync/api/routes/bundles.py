"""Bundle routes: the device downloads (`/bundles/...`, no token: what they fetch is signed), the registry's
list and upload (viewer / operator), and what explains a version (viewer, for auditors).

Downloads carry the file's sha256 as a strong ETag (If-None-Match -> 304) and honour HTTP range requests.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Path, Request, Response
from fastapi.responses import FileResponse

from cloud_sync.api.auth import Auth
from cloud_sync.api.context import CloudContext, Principal
from cloud_sync.api.errors import ERRORS
from cloud_sync.loop.governance import Explanations, explanations
from cloud_sync.store.bundles import BUNDLE_FILES
from contracts.errors import NotFoundError
from contracts.manifest import MODEL_FILE

__all__ = ["router"]


def router(ctx: CloudContext, auth: Auth) -> APIRouter:
    routes = APIRouter(responses=ERRORS)
    registry = ctx.registry

    @routes.get(
        "/bundles/{name}/{version}/{filename}",
        tags=["bundle server"],
        summary="Download a bundle file (ETag = sha256, ranges)",
    )
    def download(name: str, version: int, filename: str, request: Request) -> Response:
        if filename not in BUNDLE_FILES:
            raise NotFoundError(f"a bundle has {', '.join(BUNDLE_FILES)}; not {filename!r}")
        info = registry.get(name, version)
        path = info.path / filename
        if not path.is_file():
            raise NotFoundError(f"{filename} of bundle {name}/{version} is missing on the server")
        etag = f'"{registry.file_digest(path)}"'
        if etag in {tag.strip() for tag in request.headers.get("if-none-match", "").split(",")}:
            return Response(status_code=304, headers={"ETag": etag})
        media = "application/octet-stream" if filename == MODEL_FILE else "application/json"
        return FileResponse(path, media_type=media, headers={"ETag": etag, "Cache-Control": "no-cache"})

    @routes.get("/v1/bundles", tags=["bundles"])
    def bundles(*, _p: Principal = Depends(auth.viewer)) -> list[dict[str, Any]]:
        return [info.summary() for info in registry.all()]

    @routes.put("/v1/bundles", tags=["bundles"], status_code=201)
    async def upload_bundle(*, _p: Principal = Depends(auth.operator), request: Request) -> dict[str, Any]:
        """Body: a tar of model.onnx, manifest.json and manifest.sig; verified before it is stored."""
        info = registry.add_tar(await request.body())
        return info.summary()

    @routes.get("/v1/bundles/{name}/{version}/explanations", tags=["bundles"], response_model=Explanations)
    def bundle_explanations(
        *, _p: Principal = Depends(auth.viewer), name: str, version: int = Path(ge=1, le=2**63 - 1)
    ) -> Explanations:
        """The version's global permutation importance and whether devices explain single predictions
        (from the signed manifest on the bundle server; 404 for an unknown bundle)."""
        return explanations(registry.get(name, version).manifest)

    return routes
