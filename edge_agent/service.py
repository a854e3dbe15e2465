"""The inference service: the one object every transport (REST today, others later) calls to predict.

It holds the model being served and swaps it atomically: `predict` takes one reference to the current
`LoadedModel` and uses only that, so a request that started on the old session finishes on it while new
requests see the new one; the old session is freed when its last request is done. No lock on the hot path.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from contracts.bundle import Bundle
from contracts.errors import NotFoundError, SchemaError
from contracts.manifest import Manifest
from contracts.runtime import OnnxModel, encode_records
from contracts.telemetry import WindowCounter
from edge_agent.errors import ModelNotReady
from edge_agent.feedback import FeedbackStore
from edge_agent.metrics import AgentMetrics
from edge_agent.telemetry import TelemetryReporter

__all__ = ["InferenceService", "LoadedModel", "PredictionBatch"]


@dataclass(frozen=True)
class LoadedModel:
    model: OnnxModel
    bundle: Bundle
    counter: WindowCounter | None = None
    """Telemetry counter of this model's traffic (None when telemetry is off)."""
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
    def __init__(
        self,
        metrics: AgentMetrics | None = None,
        telemetry: TelemetryReporter | None = None,
        feedback: FeedbackStore | None = None,
    ) -> None:
        self._current: LoadedModel | None = None
        self._swap_lock = threading.Lock()
        self._metrics = metrics
        self._telemetry = telemetry
        self.feedback = feedback or FeedbackStore()
        self._counter: tuple[LoadedModel, Any] | None = None

    @property
    def current(self) -> LoadedModel | None:
        return self._current

    @property
    def ready(self) -> bool:
        return self._current is not None

    def swap(self, model: OnnxModel, bundle: Bundle) -> LoadedModel | None:
        """Serve `model` from now on; returns the previous one (still valid for requests already running)."""
        with self._swap_lock:
            counter = None
            if self._telemetry is not None:
                counter = self._telemetry.set_model(model.manifest, bundle.manifest.onnx.sha256)
            loaded = LoadedModel(model, bundle, counter)
            previous, self._current = self._current, loaded
        if self._metrics is not None:
            self._metrics.set_model(loaded.manifest)
        return previous

    def predict(self, records: Sequence[Mapping[str, Any]]) -> PredictionBatch:
        """Check records against the model's schema and predict them (SchemaError names the bad field)."""
        loaded = self._current
        if loaded is None:
            raise ModelNotReady("no model is loaded yet: install one with --bundle or publish a desired state")
        started = time.perf_counter()
        feed = encode_records(records, loaded.manifest.inputs)
        result = loaded.model.predict_feed(feed)
        keys = loaded.class_keys
        labels = result.labels.tolist()
        ids = [uuid.uuid4().hex for _ in labels]
        predictions = [
            {"prediction_id": pid, "label": label, "probabilities": dict(zip(keys, row, strict=True))}
            for pid, label, row in zip(ids, labels, result.probabilities.tolist(), strict=True)
        ]
        if loaded.counter is not None:
            loaded.counter.observe(feed, result.labels, time.perf_counter() - started)
        self.feedback.remember(ids, labels, loaded)
        self._count(loaded, len(predictions))
        return PredictionBatch(loaded, predictions)

    def record_error(self, kind: str, loaded: LoadedModel | None = None) -> None:
        """Count a refused or failed request in the current telemetry window."""
        loaded = loaded or self._current
        if loaded is not None and loaded.counter is not None:
            loaded.counter.observe_error(kind)

    def feedback_for(self, prediction_id: str, actual: Any) -> dict[str, Any]:
        """Record the true label of an earlier prediction; NotFoundError for an unknown or forgotten id."""
        remembered = self.feedback.pop(prediction_id)
        if remembered is None:
            raise NotFoundError(
                f"prediction id '{prediction_id}' is unknown: it was never made here, already has feedback, "
                "or is older than the last feedback_capacity predictions (or the agent restarted)"
            )
        loaded = remembered.model
        classes = loaded.class_keys
        if str(actual) not in classes:
            self.feedback.restore(prediction_id, remembered)
            raise SchemaError(f"label {actual!r} is not a class of the model (classes: {', '.join(classes)})", "label")
        if loaded.counter is not None:
            loaded.counter.observe_feedback(actual, remembered.label)
        manifest = loaded.manifest
        return {
            "prediction_id": prediction_id,
            "predicted": remembered.label,
            "actual": actual,
            "correct": str(actual) == str(remembered.label),
            "model": manifest.name,
            "model_version": manifest.version,
        }

    def _count(self, loaded: LoadedModel, rows: int) -> None:
        if self._metrics is None:
            return
        cached = self._counter
        if cached is None or cached[0] is not loaded:
            manifest = loaded.manifest
            cached = (loaded, self._metrics.predictions.labels(manifest.name, str(manifest.version)))
            self._counter = cached
        cached[1].inc(rows)
