"""What every route module of the cloud API is built from: the running cloud's parts (`CloudContext`) and the
caller a token names (`Principal`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from cloud_sync.ingest.subscriber import IngestStats
from cloud_sync.loop.impact import ValueMatrix
from cloud_sync.rollouts.controller import Rollouts
from cloud_sync.signing_keys import KeyRotation
from cloud_sync.store.bundles import BundleRegistry
from cloud_sync.store.db import Store

__all__ = ["CloudContext", "Principal", "Role"]


def _yes() -> bool:
    return True


Role = Literal["viewer", "operator"]


@dataclass(frozen=True)
class Principal:
    """Who called: the actor name the audit log records, and the role of their token."""

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
    value_matrices: dict[str, ValueMatrix] = field(default_factory=dict)
    """Business impact: model name -> its cost/benefit matrix (GET /v1/impact)."""
    max_body_bytes: int = 256 * 2**20
    """Largest request body (a bundle upload is the largest); over it -> 413 before it is all read."""
    is_leader: Callable[[], bool] = field(default=_yes)
    """True while this replica runs the controller loops (GET /metrics edgeloop_cloud_leader, /readyz)."""
    broker_connected: Callable[[], bool] = field(default=_yes)
    """True while the ingest and the publisher are connected to the broker (GET /readyz)."""
    keys: KeyRotation | None = None
    """Signing key rotation (GET /v1/keys, POST /v1/keys/rotate|retire); None = not offered (503)."""
