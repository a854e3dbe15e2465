"""The bundle registry and server: signed bundles under `bundles_dir/{name}-v{version}/`, served to devices.

    registry = BundleRegistry(settings.bundles_dir, public_key)
    registry.add(Path("bundles/machine-failure"))      # verified (sha256 + signature), copied atomically
    registry.get("machine-failure", 2)                 # served by api/routes/bundles.py: GET /bundles/...

Downloads carry the file's sha256 as a strong ETag (If-None-Match -> 304) and honour HTTP range requests
(an interrupted device download resumes). Devices need no token: what they fetch is signed, and they check
size, sha256 and signature before using it. The ETag is computed from the bytes on disk, not copied from
the manifest, so a corrupted file is visible to anyone comparing the two.
"""

from __future__ import annotations

import io
import shutil
import tarfile
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contracts.bundle import atomic_directory, load_bundle, parse_manifest
from contracts.errors import ConflictError, InputError, NotFoundError
from contracts.manifest import MANIFEST_FILE, MODEL_FILE, SIGNATURE_FILE, Manifest, sha256_file
from contracts.signing import KeySet, PublicKey, trusted_keys

__all__ = ["BUNDLE_FILES", "BundleInfo", "BundleRegistry", "bundle_tar"]

BUNDLE_FILES = (MODEL_FILE, MANIFEST_FILE, SIGNATURE_FILE)
"""The three files of a bundle, the only ones the bundle server serves."""
_MAX_UPLOAD = 1 << 30


@dataclass(frozen=True)
class BundleInfo:
    path: Path
    manifest: Manifest
    signature: str

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> int:
        return self.manifest.version

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "sha256": self.manifest.onnx.sha256,
            "size": self.manifest.onnx.size,
            "created_at": self.manifest.created_at,
            "estimator": self.manifest.lineage.estimator,
            "metrics": self.manifest.lineage.metrics,
            "path": str(self.path),
        }


class BundleRegistry:
    def __init__(self, root: Path, public_key: PublicKey | None = None, keys_dir: Path | None = None) -> None:
        """Bundles are verified with `public_key`, or with the trusted set of `keys_dir` (read again at each
        check, so a key rotation made by another replica counts at once)."""
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.public_key = public_key
        self.keys_dir = keys_dir
        self._lock = threading.Lock()
        self._cache: dict[Path, tuple[int, BundleInfo]] = {}
        self._digests: dict[Path, tuple[int, int, str]] = {}

    def trusted(self) -> PublicKey | KeySet | None:
        """What an uploaded bundle must be signed by (None: sha256 only)."""
        return trusted_keys(self.keys_dir) if self.keys_dir is not None else self.public_key

    def dir_for(self, name: str, version: int) -> Path:
        return self.root / f"{name}-v{version}"

    def _read(self, path: Path) -> BundleInfo:
        manifest_path = path / MANIFEST_FILE
        mtime = manifest_path.stat().st_mtime_ns
        with self._lock:
            cached = self._cache.get(path)
        if cached and cached[0] == mtime:
            return cached[1]
        info = BundleInfo(
            path, parse_manifest(manifest_path.read_bytes(), str(manifest_path)), (path / SIGNATURE_FILE).read_text()
        )
        with self._lock:
            self._cache[path] = (mtime, info)
        return info

    def all(self) -> list[BundleInfo]:
        found = []
        for path in sorted(self.root.iterdir()):
            if (
                path.name.startswith(".")
                or not (path / MANIFEST_FILE).is_file()
                or not (path / SIGNATURE_FILE).is_file()
            ):
                continue
            try:
                found.append(self._read(path))
            except InputError:
                continue
        return sorted(found, key=lambda info: (info.name, info.version))

    def get(self, name: str, version: int) -> BundleInfo:
        path = self.dir_for(name, version)
        if not (path / MANIFEST_FILE).is_file() or not (path / SIGNATURE_FILE).is_file():
            known = ", ".join(f"{b.name}/{b.version}" for b in self.all()) or "none"
            raise NotFoundError(f"bundle {name}/{version} is not on the bundle server (known: {known})")
        return self._read(path)

    def manifest(self, name: str | None, version: int | None) -> Manifest | None:
        if name is None or version is None:
            return None
        try:
            return self.get(name, version).manifest
        except (NotFoundError, InputError):
            return None

    def add(self, source: Path) -> BundleInfo:
        """Verify a bundle directory (size, sha256, signature) and copy it in; the same bundle twice is a no-op."""
        bundle = load_bundle(Path(source), self.trusted())
        target = self.dir_for(bundle.manifest.name, bundle.manifest.version)
        if target.resolve() == Path(source).resolve():
            return self._read(target)
        if (target / MANIFEST_FILE).is_file():
            existing = self._read(target)
            if existing.manifest == bundle.manifest:
                return existing
            if existing.manifest.onnx.sha256 != bundle.manifest.onnx.sha256:
                # "v2" must always mean one model: devices and the audit log identify versions by number.
                raise ConflictError(
                    f"{bundle.manifest.ref} is already stored with another model (onnx sha256 "
                    f"{existing.manifest.onnx.sha256[:12]}…, this one {bundle.manifest.onnx.sha256[:12]}…); "
                    "register a new version instead of reusing the number"
                )
        with atomic_directory(target) as tmp:
            for name in BUNDLE_FILES:
                shutil.copyfile(bundle.path / name, tmp / name)
        return self._read(target)

    def add_tar(self, data: bytes) -> BundleInfo:
        """A bundle uploaded as a tar of model.onnx, manifest.json and manifest.sig (nothing else is read)."""
        if len(data) > _MAX_UPLOAD:
            raise InputError(f"bundle upload is {len(data)} bytes, over the {_MAX_UPLOAD} byte limit")
        with tempfile.TemporaryDirectory(prefix="edgeloop-upload-") as tmp:
            try:
                with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as archive:
                    for member in archive.getmembers():
                        name = Path(member.name).name
                        if member.isfile() and name in BUNDLE_FILES:
                            handle = archive.extractfile(member)
                            if handle is not None:
                                (Path(tmp) / name).write_bytes(handle.read())
            except tarfile.TarError as exc:
                raise InputError(f"bundle upload is not a tar archive: {exc}") from None
            missing = [name for name in BUNDLE_FILES if not (Path(tmp) / name).is_file()]
            if missing:
                raise InputError(f"bundle upload lacks {', '.join(missing)}")
            return self.add(Path(tmp))

    def file_digest(self, path: Path) -> str:
        """sha256 of a file, cached by (mtime, size)."""
        stat = path.stat()
        with self._lock:
            cached = self._digests.get(path)
        if cached and cached[:2] == (stat.st_mtime_ns, stat.st_size):
            return cached[2]
        digest = sha256_file(path)
        with self._lock:
            self._digests[path] = (stat.st_mtime_ns, stat.st_size, digest)
        return digest


def bundle_tar(path: Path) -> bytes:
    """The upload body for a bundle directory (used by `edgeloop deploy`)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name in BUNDLE_FILES:
            archive.add(path / name, arcname=name)
    return buffer.getvalue()
