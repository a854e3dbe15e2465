"""`POST /v1/bundles` (bearer token): hand a bundle to the running agent without a network to the cloud, e.g. one
that came on a USB stick (`edgeloop agent import BUNDLE_DIR_OR_TAR`). The body is a tar (optionally gzip) of
the bundle's manifest.json, manifest.sig and model.onnx; nothing else in it is read.

The bundle then takes the path of `--bundle` (`Updater.install_local`): verified like an OTA update (signature
with the device's public key, sha256 and size, golden samples replayed before it is served), and an older
version of the served model is refused as a replay unless its manifest is a signed rollback. Answers:

    200 {"status": "deployed" | "rolled_back" | "unchanged", "model": "name/version"}
    409 ModelRejected (older than the served version: a replay)     422 IntegrityError (tampered, wrong key)
    413 over download_max_bytes                                      422 InputError (not a tar, a file missing)
"""

from __future__ import annotations

import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, Response
from starlette.concurrency import run_in_threadpool

from contracts.errors import InputError, ModelRejected, PayloadTooLarge
from contracts.manifest import MANIFEST_FILE, MODEL_FILE, SIGNATURE_FILE
from edge_agent.protocol_support import ProtocolContext, json_response

__all__ = ["BUNDLE_FILES", "install_bundle_import", "unpack_bundle_tar"]

BUNDLE_FILES = (MANIFEST_FILE, SIGNATURE_FILE, MODEL_FILE)


def unpack_bundle_tar(archive_file: Any, target: Path) -> None:
    """Write the bundle files of a tar (any compression tarfile reads) into `target`; InputError otherwise."""
    try:
        with tarfile.open(fileobj=archive_file, mode="r:*") as archive:
            for member in archive.getmembers():
                name = Path(member.name).name
                if member.isfile() and name in BUNDLE_FILES:
                    handle = archive.extractfile(member)
                    if handle is not None:
                        with open(target / name, "wb") as out:
                            while chunk := handle.read(1 << 20):
                                out.write(chunk)
    except tarfile.TarError as exc:
        raise InputError(f"the bundle is not a tar archive ({exc}): send a tar of {', '.join(BUNDLE_FILES)}") from None
    missing = [name for name in (MANIFEST_FILE, MODEL_FILE) if not (target / name).is_file()]
    if missing:
        raise InputError(f"the bundle archive lacks {', '.join(missing)}")


def install_bundle_import(
    app: FastAPI, ctx: ProtocolContext, install: Callable[[Path], Any], *, max_bytes: int
) -> None:
    """Add POST /v1/bundles; `install` is `Updater.install_local` (returns an UpdateOutcome)."""

    async def import_bundle(request: Request) -> Response:
        ctx.check_auth(request)
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_bytes:
            raise PayloadTooLarge(f"bundle is {length} bytes, over the limit of {max_bytes} (download_max_bytes)")
        with tempfile.TemporaryDirectory(prefix="edgeloop-import-") as tmp, tempfile.TemporaryFile() as spool:
            size = 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > max_bytes:
                    raise PayloadTooLarge(f"bundle is over the limit of {max_bytes} bytes (download_max_bytes)")
                spool.write(chunk)
            spool.seek(0)
            unpack_bundle_tar(spool, Path(tmp))
            outcome = await run_in_threadpool(install, Path(tmp))
        if outcome.status == "rejected":
            raise ModelRejected(f"{outcome.ref} refused: {outcome.reason}")
        return json_response({"status": outcome.status, "model": outcome.ref})

    app.add_route("/v1/bundles", import_bundle, methods=["POST"], include_in_schema=False)
