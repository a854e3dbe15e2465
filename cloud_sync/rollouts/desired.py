"""The desired states a rollout publishes: a bundle's signed manifest and download URL, with the challenger
beside it in shadow (`ShadowBundle`) or as an A/B split (`ABSplit`), and the previous version's manifest
re-signed with rollback=true for a rollback (devices refuse an older version otherwise).
"""

from __future__ import annotations

import time
from pathlib import Path

from cloud_sync.store import audit
from cloud_sync.store.bundles import BundleInfo
from contracts.manifest import canonical_bytes
from contracts.messages import ABSplit, DesiredState, ShadowBundle
from contracts.signing import PRIVATE_KEY_FILE, load_private_key, sign_bytes

__all__ = ["desired_state", "model_url", "rollback_state"]


def model_url(base_url: str, info: BundleInfo) -> str:
    """Where a device downloads the bundle's model (`base_url` without a trailing slash)."""
    return f"{base_url}/bundles/{info.name}/{info.version}/model.onnx"


def desired_state(
    base_url: str,
    info: BundleInfo,
    rollout_id: str,
    *,
    shadow: BundleInfo | None = None,
    ab: tuple[BundleInfo, float, str | None] | None = None,
) -> DesiredState:
    """`info` served; `shadow`: a challenger run in shadow; `ab`: (challenger, its fraction of the keys, key field)."""
    return DesiredState(
        manifest=info.manifest.model_dump(mode="json"),
        signature=info.signature,
        model_url=model_url(base_url, info),
        rollout_id=rollout_id,
        issued_at=audit.iso(time.time()) or "",
        shadow=None
        if shadow is None
        else ShadowBundle(
            manifest=shadow.manifest.model_dump(mode="json"),
            signature=shadow.signature,
            model_url=model_url(base_url, shadow),
        ),
        ab=None
        if ab is None
        else ABSplit(
            manifest=ab[0].manifest.model_dump(mode="json"),
            signature=ab[0].signature,
            model_url=model_url(base_url, ab[0]),
            fraction=ab[1],
            key_field=ab[2],
        ),
    )


def rollback_state(base_url: str, info: BundleInfo, rollout_id: str, *, keys_dir: Path) -> DesiredState:
    """The previous manifest with rollback=true, re-signed: devices refuse an older version otherwise."""
    key = load_private_key(keys_dir / PRIVATE_KEY_FILE)
    manifest = info.manifest.model_copy(update={"rollback": True})
    desired = desired_state(base_url, info, rollout_id)
    desired.manifest = manifest.model_dump(mode="json")
    desired.signature = sign_bytes(canonical_bytes(manifest), key).decode()
    return desired
