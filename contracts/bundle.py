"""Reading and verifying a bundle directory, and writing one atomically.

`load_bundle(path, public_key)` is what every consumer calls (edge agent, batch scoring, cloud): it
parses the manifest, checks the ONNX file's size and sha256 against it and, when a public key is
given, the Ed25519 signature. Nothing downstream ever runs an unverified model by accident.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
from pydantic import ValidationError

from contracts.errors import InputError, IntegrityError, NotFoundError
from contracts.manifest import MANIFEST_FILE, SIGNATURE_FILE, Manifest, canonical_bytes, sha256_file
from contracts.signing import KeySet, PublicKey, verify_bytes

__all__ = ["Bundle", "atomic_directory", "load_bundle", "parse_manifest"]


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: Manifest
    signed: bool

    @property
    def model_path(self) -> Path:
        return self.path / self.manifest.onnx.file


def parse_manifest(data: bytes, source: str = "manifest") -> Manifest:
    try:
        return Manifest.model_validate(orjson.loads(data))
    except orjson.JSONDecodeError as exc:
        raise InputError(f"{source} is not valid JSON: {exc}") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise InputError(f"{source} does not match contract v1 at {where}: {first['msg']}") from None


def load_bundle(path: Path, public_key: PublicKey | KeySet | None = None, require_signature: bool = True) -> Bundle:
    """Parse and verify the bundle at `path` (signed by `public_key`, or by a key of the set); raise a one-line
    error naming what is wrong."""
    path = Path(path)
    if not path.is_dir():
        raise NotFoundError(f"bundle directory {path} not found")
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.is_file():
        raise InputError(f"{path} is not a bundle: {MANIFEST_FILE} is missing")
    manifest = parse_manifest(manifest_path.read_bytes(), str(manifest_path))
    model_path = path / manifest.onnx.file
    if not model_path.is_file():
        raise IntegrityError(f"bundle {path} is incomplete: {manifest.onnx.file} is missing")
    size = model_path.stat().st_size
    if size != manifest.onnx.size:
        raise IntegrityError(
            f"{model_path} is {size} bytes but the manifest says {manifest.onnx.size}: the model was altered"
        )
    digest = sha256_file(model_path)
    if digest != manifest.onnx.sha256:
        raise IntegrityError(f"sha256 of {model_path} does not match the manifest: the model was altered")
    signature_path = path / SIGNATURE_FILE
    signed = False
    if public_key is not None:
        if not signature_path.is_file():
            raise IntegrityError(f"bundle {path} is unsigned ({SIGNATURE_FILE} missing)")
        verify_bytes(canonical_bytes(manifest), signature_path.read_bytes(), public_key)
        signed = True
    elif require_signature and not signature_path.is_file():
        raise IntegrityError(f"bundle {path} is unsigned ({SIGNATURE_FILE} missing)")
    return Bundle(path=path, manifest=manifest, signed=signed)


@contextlib.contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success rename it to `final`, on error remove it.

    An existing `final` is replaced only after the new content is complete, so a reader never sees
    a half-written directory under the final name.
    """
    final = Path(final).resolve()
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
        tmp.chmod(0o755)  # mkdtemp makes it 0700; a bundle is read by other users (bundle server, agent)
        if final.exists():
            trash = final.with_name(f".{final.name}.old")
            shutil.rmtree(trash, ignore_errors=True)
            os.replace(final, trash)
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
