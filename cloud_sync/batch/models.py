"""Find the bundle a scoring job runs: a bundle directory, or `NAME@ALIAS` / `NAME/VERSION` resolved through
the MLflow registry to the bundle `edgeloop convert` logged on the version's run (artifact path
`edgeloop/bundle`), downloaded once into a cache directory. Either way the bundle is verified with
`load_bundle` (sha256 of the model, Ed25519 signature of the manifest) before a row is scored.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cloud_sync.batch.settings import ScoreSettings, default_tracking_uri
from contracts.bundle import Bundle, atomic_directory, load_bundle
from contracts.errors import EdgeloopError, IntegrityError, NotFoundError
from contracts.logs import log_event
from contracts.manifest import canonical_bytes
from contracts.registry import ModelReference, find_model_version, is_reference, parse_reference
from contracts.signing import PublicKey, load_public_key
from contracts.tracking import ensure_tracking_reachable

__all__ = ["BUNDLE_ARTIFACT_PATH", "ResolvedBundle", "bundle_digest", "resolve_bundle"]

logger = logging.getLogger("edgeloop.batch")

BUNDLE_ARTIFACT_PATH = "edgeloop/bundle"
"""Where `edgeloop convert` logs the bundle on the model version's run."""
_DIGEST_TAG = "edgeloop.bundle_sha256"


@dataclass(frozen=True)
class ResolvedBundle:
    bundle: Bundle
    reference: str
    """What the user asked for (a directory or NAME@ALIAS)."""
    tracking_uri: str | None
    """The registry the bundle came from; None for a bundle directory."""

    @property
    def digest(self) -> str:
        return bundle_digest(self.bundle)


def bundle_digest(bundle: Bundle) -> str:
    """sha256 of the canonical manifest: pins the model too (the manifest holds its sha256), and is the value
    the converter tags the registry version with (`edgeloop.bundle_sha256`)."""
    return hashlib.sha256(canonical_bytes(bundle.manifest)).hexdigest()


def resolve_bundle(model: str, settings: ScoreSettings) -> ResolvedBundle:
    """Return the verified bundle for `model` (a bundle directory, NAME@ALIAS, NAME@latest or NAME/VERSION)."""
    public_key = load_public_key(settings.public_key)
    path = Path(model)
    if path.is_dir():
        return ResolvedBundle(load_bundle(path, public_key), model, None)
    if not is_reference(model):
        raise NotFoundError(
            f"bundle directory {model} not found (and '{model}' is not a NAME@ALIAS or NAME/VERSION reference)"
        )
    uri = settings.tracking_uri or default_tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise NotFoundError(
            f"no MLflow store at {uri.removeprefix('sqlite:///')} to resolve '{model}'; "
            "train a model first or pass --tracking-uri"
        )
    ensure_tracking_reachable(uri)
    return _from_registry(parse_reference(model), uri, settings.cache_dir, public_key)


def _from_registry(parsed: ModelReference, uri: str, cache_dir: Path, public_key: PublicKey) -> ResolvedBundle:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    reference = parsed.text
    name = str(parsed.name)
    try:
        mv = find_model_version(client, parsed)
        run_id: str = mv.run_id
        number = int(mv.version)
        expected_digest = (mv.tags or {}).get(_DIGEST_TAG)
        cached = cache_dir / name / f"v{number}"
        bundle = _cached(cached, public_key, expected_digest, run_id)
        if bundle is None:
            if not client.list_artifacts(run_id, BUNDLE_ARTIFACT_PATH):
                raise NotFoundError(
                    f"model '{name}' version {number} has no bundle yet; run "
                    f"`edgeloop convert {reference} --out bundles/{name}` first"
                )
            bundle = _download(client, run_id, cached, public_key, f"'{name}' version {number}")
    except MlflowException as exc:
        raise NotFoundError(f"cannot resolve '{reference}': {exc.message.splitlines()[0]}") from None
    manifest = bundle.manifest
    if manifest.name != name or manifest.version != number:
        raise IntegrityError(
            f"the bundle logged for '{name}' version {number} describes {manifest.name} v{manifest.version}; "
            f"re-run `edgeloop convert {name}/{number}`"
        )
    log_event(logger, "bundle resolved", reference=reference, version=number, path=str(bundle.path))
    return ResolvedBundle(bundle, reference, uri)


def _cached(path: Path, public_key: PublicKey, expected_digest: str | None, run_id: str) -> Bundle | None:
    """The cached bundle if it verifies and is the one the registry points at, else None (download again)."""
    if not path.is_dir():
        return None
    try:
        bundle = load_bundle(path, public_key)
    except EdgeloopError:
        return None
    if expected_digest is not None:
        return bundle if bundle_digest(bundle) == expected_digest else None
    return bundle if bundle.manifest.lineage.run_id == run_id else None


def _download(client: object, run_id: str, final: Path, public_key: PublicKey, what: str) -> Bundle:
    with tempfile.TemporaryDirectory(prefix="edgeloop-bundle-") as scratch:
        local = Path(client.download_artifacts(run_id, BUNDLE_ARTIFACT_PATH, scratch))  # type: ignore[attr-defined]
        try:
            load_bundle(local, public_key)
        except IntegrityError as exc:
            raise IntegrityError(f"the registry's bundle for {what} failed verification: {exc.message}") from None
        with atomic_directory(final) as building:
            for item in local.iterdir():
                shutil.move(str(item), building / item.name)
    return load_bundle(final, public_key)
