"""The model store on disk: verified bundles under `state_dir/bundles/`, a `current` pointer, old versions.

    state_dir/
      bundles/machine-failure-v2-d98a4048/{model.onnx, manifest.json, manifest.sig}
      bundles/machine-failure-v1-5be0c1aa/...        kept for rollback (keep_versions)
      current                                        one line: the directory name being served
      tmp/                                           downloads and half-copied bundles (same file system)

A bundle enters the store only through a temp directory renamed into place after it was verified, and the
pointer is switched by writing a temp file, fsync, then os.replace, so a power cut at any moment leaves the
previous model or the new one, never a mix. Starting needs no network: `candidates()` reads the disk only.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from contracts.bundle import Bundle, load_bundle
from contracts.errors import EdgeloopError
from contracts.logs import log_event
from contracts.manifest import MANIFEST_FILE, SIGNATURE_FILE, Manifest
from contracts.signing import KeySet, PublicKey

__all__ = ["FixedKeys", "ModelStore", "SigningKeys", "bundle_dir_name"]

logger = logging.getLogger("edgeloop.agent.store")
POINTER_FILE = "current"


def bundle_dir_name(manifest: Manifest) -> str:
    return f"{manifest.name}-v{manifest.version}-{manifest.onnx.sha256[:8]}"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write a small file so that readers see the old content or the new one, even after a power cut."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


class SigningKeys(Protocol):
    """The keys bundles are verified with (edge_agent.trust.TrustedKeys: a set that a key rotation changes)."""

    def current(self) -> KeySet:
        """What a new bundle (an update, `--bundle`) must be signed by."""
        ...

    def installed(self) -> KeySet:
        """What a bundle already in the store may be signed by (current keys and retired ones)."""
        ...


class FixedKeys:
    """One public key, never rotated (a store opened by a tool or a test)."""

    def __init__(self, key: PublicKey) -> None:
        self._set = KeySet((key,))

    def current(self) -> KeySet:
        return self._set

    def installed(self) -> KeySet:
        return self._set


class ModelStore:
    def __init__(self, state_dir: Path, keys: SigningKeys | PublicKey | None, keep_versions: int = 3) -> None:
        self.state_dir = Path(state_dir).resolve()
        self.bundles_dir = self.state_dir / "bundles"
        self.tmp_dir = self.state_dir / "tmp"
        self.pointer = self.state_dir / POINTER_FILE
        self.keys: SigningKeys | None = FixedKeys(keys) if isinstance(keys, PublicKey) else keys
        self.keep_versions = keep_versions
        shutil.rmtree(self.tmp_dir, ignore_errors=True)  # leftovers of a download cut by a restart
        for directory in (self.bundles_dir, self.tmp_dir):
            directory.mkdir(parents=True, exist_ok=True)

    # -- reading ------------------------------------------------------------------------------------
    def verify(self, path: Path, fresh: bool = False) -> Bundle:
        """Verify a bundle directory: sha256 and size always, the signature when keys are set (a `fresh` bundle,
        not installed yet, by a current key; a stored one may also be signed by a key retired since)."""
        keys = None if self.keys is None else (self.keys.current() if fresh else self.keys.installed())
        return load_bundle(path, keys, require_signature=True)

    def current_name(self) -> str | None:
        try:
            name = self.pointer.read_text().strip()
        except FileNotFoundError:
            return None
        return name or None

    def installed(self) -> list[Path]:
        """Bundle directories in the store, newest first (by install time)."""
        dirs = [p for p in self.bundles_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
        return sorted(dirs, key=lambda p: p.stat().st_mtime_ns, reverse=True)

    def candidates(self) -> Iterator[Bundle]:
        """Verified bundles to serve at start, from disk only: the current one first, then newest first.

        A damaged bundle (disk error, hand edit) is skipped with an error in the log, so a device falls
        back to the newest version it still trusts instead of serving nothing.
        """
        name = self.current_name()
        paths = [self.bundles_dir / name] if name and (self.bundles_dir / name).is_dir() else []
        paths += [path for path in self.installed() if path.name != name]
        for path in paths:
            try:
                bundle = self.verify(path)
            except EdgeloopError as exc:
                log_event(logger, "stored bundle unusable", level=logging.ERROR, bundle=path.name, error=exc.message)
                continue
            yield bundle

    def find(self, manifest: Manifest) -> Bundle | None:
        """The stored copy of exactly this bundle (name, version, sha256), verified, or None."""
        path = self.bundles_dir / bundle_dir_name(manifest)
        if not path.is_dir():
            return None
        try:
            bundle = self.verify(path)
        except EdgeloopError:
            return None
        return bundle if bundle.manifest.onnx.sha256 == manifest.onnx.sha256 else None

    # -- writing ------------------------------------------------------------------------------------
    def install_from_dir(self, source: Path) -> Bundle:
        """Verify a bundle directory and copy it into the store (no-op when the same bundle is there)."""
        bundle = self.verify(source, fresh=True)
        existing = self.find(bundle.manifest)
        if existing is not None:
            return existing
        with self._staging(bundle.manifest) as staging:
            for name in (MANIFEST_FILE, SIGNATURE_FILE, bundle.manifest.onnx.file):
                if (bundle.path / name).is_file():
                    shutil.copyfile(bundle.path / name, staging / name)
        return self._finish(bundle.manifest)

    def install_parts(self, manifest_json: bytes, signature: bytes, model_file: Path, manifest: Manifest) -> Bundle:
        """Assemble a bundle from a downloaded model file and the manifest + signature of a desired state."""
        with self._staging(manifest) as staging:
            (staging / MANIFEST_FILE).write_bytes(manifest_json)
            (staging / SIGNATURE_FILE).write_bytes(signature)
            os.replace(model_file, staging / manifest.onnx.file)
        return self._finish(manifest)

    def activate(self, bundle: Bundle) -> None:
        """Point `current` at a stored bundle, then prune versions beyond keep_versions."""
        if bundle.path.parent.resolve() != self.bundles_dir:
            raise ValueError(f"{bundle.path} is not in the store")
        write_atomic(self.pointer, (bundle.path.name + "\n").encode())
        os.utime(bundle.path)  # newest first in installed(): the order of activation
        self.prune()

    def remove(self, bundle: Bundle) -> None:
        """Drop a stored bundle that failed its checks (never the current one)."""
        if bundle.path.name != self.current_name() and bundle.path.parent.resolve() == self.bundles_dir:
            shutil.rmtree(bundle.path, ignore_errors=True)

    def prune(self) -> None:
        current = self.current_name()
        others = [path for path in self.installed() if path.name != current]
        spare = self.keep_versions - 1 if current else self.keep_versions
        for path in others[spare:]:
            shutil.rmtree(path, ignore_errors=True)
            log_event(logger, "old bundle pruned", bundle=path.name)

    def new_temp_file(self, suffix: str = ".part") -> Path:
        fd, name = tempfile.mkstemp(prefix="download-", suffix=suffix, dir=self.tmp_dir)
        os.close(fd)
        return Path(name)

    # -- internals ----------------------------------------------------------------------------------
    def _staging(self, manifest: Manifest) -> _Staging:
        return _Staging(self, manifest)

    def _finish(self, manifest: Manifest) -> Bundle:
        path = self.bundles_dir / bundle_dir_name(manifest)
        return self.verify(path)


class _Staging:
    """Build a bundle in tmp/, then rename it into bundles/ (or throw it away on error)."""

    def __init__(self, store: ModelStore, manifest: Manifest) -> None:
        self.store = store
        self.final = store.bundles_dir / bundle_dir_name(manifest)
        self.path = Path(tempfile.mkdtemp(prefix=f"{self.final.name}.", dir=store.tmp_dir))

    def __enter__(self) -> Path:
        return self.path

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            return
        for child in self.path.iterdir():
            with open(child, "rb") as handle:
                os.fsync(handle.fileno())
        if self.final.exists():  # a damaged copy of the same bundle: replace it
            trash = Path(tempfile.mkdtemp(prefix="trash.", dir=self.store.tmp_dir))
            os.replace(self.final, trash / "old")
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(self.path, self.final)
        _fsync_dir(self.store.bundles_dir)
