"""The inference service: the one object every transport (REST today, others later) calls to predict.

It holds the model being served and swaps it atomically: `predict` takes one reference to the current
`LoadedModel` and uses only that, so a request that started on the old session finishes on it while new
requests see the new one; the old session is freed when its last request is done. No lock on the hot path.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from contracts.bundle import Bundle
from contracts.manifest import Manifest
from contracts.runtime import OnnxModel, encode_records
from edge_agent.errors import ModelNotReady
from edge_agent.metrics import AgentMetrics

__all__ = ["InferenceService", "LoadedModel", "PredictionBatch"]


@dataclass(frozen=True)
class LoadedModel:
    model: OnnxModel
    bundle: Bundle
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


class InferenceService:
    def __init__(self, metrics: AgentMetrics | None = None) -> None:
        self._current: LoadedModel | None = None
        self._swap_lock = threading.Lock()
        self._metrics = metrics
        self._counter: tuple[LoadedModel, Any] | None = None

    @property
    def current(self) -> LoadedModel | None:
        return self._current

    @property
    def ready(self) -> bool:
        return self._current is not None

    def swap(self, model: OnnxModel, bundle: Bundle) -> LoadedModel | None:
        """Serve `model` from now on; returns the previous one (still valid for requests already running)."""
        loaded = LoadedModel(model, bundle)
        with self._swap_lock:
            previous, self._current = self._current, loaded
        if self._metrics is not None:
            self._metrics.set_model(loaded.manifest)
        return previous

    def predict(self, records: Sequence[Mapping[str, Any]]) -> PredictionBatch:
        """Check records against the model's schema and predict them (SchemaError names the bad field)."""
        loaded = self._current
        if loaded is None:
            raise ModelNotReady("no model is loaded yet: install one with --bundle or publish a desired state")
        feed = encode_records(records, loaded.manifest.inputs)
        result = loaded.model.predict_feed(feed)
        keys = loaded.class_keys
        predictions = [
            {"prediction_id": uuid.uuid4().hex, "label": label, "probabilities": dict(zip(keys, row, strict=True))}
            for label, row in zip(result.labels.tolist(), result.probabilities.tolist(), strict=True)
        ]
        self._count(loaded, len(predictions))
        return PredictionBatch(loaded, predictions)

    def _count(self, loaded: LoadedModel, rows: int) -> None:
        if self._metrics is None:
            return
        cached = self._counter
        if cached is None or cached[0] is not loaded:
            manifest = loaded.manifest
            cached = (loaded, self._metrics.predictions.labels(manifest.name, str(manifest.version)))
            self._counter = cached
        cached[1].inc(rows)
