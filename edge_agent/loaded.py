"""The model being served, as the agent holds it: the onnxruntime model, its verified bundle and its telemetry
counter, plus what every answer needs precomputed (class keys, feature names). And a batch of answers with the
model that gave them.

Frozen: a swap replaces the whole `LoadedModel`, so a request that took one keeps a consistent view of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from contracts.bundle import Bundle
from contracts.manifest import Manifest
from contracts.runtime import OnnxModel
from contracts.telemetry import WindowCounter

__all__ = ["LoadedModel", "PredictionBatch"]


@dataclass(frozen=True)
class LoadedModel:
    model: OnnxModel
    bundle: Bundle
    counter: WindowCounter | None = None
    """Telemetry counter of this model's traffic (None when telemetry is off); for an A/B challenger, the
    champion's counter, whose window counts the challenger's arm."""
    class_keys: tuple[str, ...] = field(init=False)
    """str(class) for each class: the keys of the probabilities in an answer."""
    feature_names: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_keys", tuple(str(value) for value in self.manifest.classes))
        object.__setattr__(self, "feature_names", frozenset(self.manifest.feature_names))

    @property
    def manifest(self) -> Manifest:
        return self.model.manifest


@dataclass(frozen=True)
class PredictionBatch:
    model: LoadedModel
    predictions: list[dict[str, Any]]
    """One {"prediction_id", "label", "probabilities": {class: p}} per record, in order."""
