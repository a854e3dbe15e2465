"""Remember recent predictions so feedback (the true label, maybe much later) can be matched to them, and
so a prediction id can be traced back to the model that made it (lineage).

A bounded in-memory map, oldest evicted first (default 100,000 predictions). Memory, not disk, because it
is written on every request; feedback for a prediction made before a restart gets a clear 404. Each entry
keeps the model that made the prediction, so feedback is counted for that model version even after a switch.
Feedback takes an entry out of that map (it counts once); the entry then moves to a second bounded map of
answered predictions (same capacity, filled only by feedback, never on the hot path) so its lineage stays
available with the label that came back.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from edge_agent.loaded import LoadedModel

__all__ = ["FeedbackStore", "RememberedPrediction"]


@dataclass(frozen=True, slots=True)
class RememberedPrediction:
    label: Any
    model: LoadedModel
    at: float = 0.0
    """When the prediction was made (epoch seconds)."""
    answered_by: str = "edge"
    """Who gave the answer: edge, cloud or edge_fallback (hybrid inference)."""
    answer: Any = None
    """The label returned to the caller when it is not the edge model's (the cloud's answer)."""
    cloud_model: str | None = None
    """NAME/VERSION of the cloud model that answered."""
    shadow_label: Any = None
    """The shadow challenger's label for this record (None without a shadow)."""
    shadow: LoadedModel | None = None
    actual: Any = None
    """The true label, once feedback arrived."""
    features: dict[str, Any] | None = None
    """The kept input fields (only with the opt-in `feedback_rows` and when this prediction was sampled)."""
    arm: str | None = None
    """A/B split: the arm that answered (`champion` or `challenger`, then `model` is that arm's model)."""


class FeedbackStore:
    """Memory: about 200 bytes per remembered prediction (its 32-character id and the slotted entry) plus
    the ordered map (table and nodes): 8.7 MiB when 100,000 predictions first fill it. Under churn (one
    insert and one eviction per prediction) CPython compacts the table to 3 x the live entries rounded up to
    a power of two, so the map reaches its steady size (2**19 slots, 14.4 MiB for 100,000) after about
    1.75 x capacity predictions and keeps it: measure RSS growth after that (bench/bench_soak.py)."""

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, RememberedPrediction] = OrderedDict()
        self._answered: OrderedDict[str, RememberedPrediction] = OrderedDict()
        self._lock = threading.Lock()
        self.evicted = 0

    def remember(
        self,
        prediction_ids: Sequence[str],
        labels: Sequence[Any],
        model: LoadedModel,
        shadow_labels: Sequence[Any] | None = None,
        shadow: LoadedModel | None = None,
        features: Sequence[dict[str, Any] | None] | None = None,
        arm: str | None = None,
    ) -> None:
        at = time.time()
        with self._lock:
            if features is not None or arm is not None:
                others = shadow_labels if shadow_labels is not None else [None] * len(labels)
                kept_rows = features if features is not None else [None] * len(labels)
                for prediction_id, label, other, kept in zip(prediction_ids, labels, others, kept_rows, strict=True):
                    self._items[prediction_id] = RememberedPrediction(
                        label, model, at, shadow_label=other, shadow=shadow, features=kept, arm=arm
                    )
            elif shadow_labels is None:
                for prediction_id, label in zip(prediction_ids, labels, strict=True):
                    self._items[prediction_id] = RememberedPrediction(label, model, at)
            else:
                for prediction_id, label, other in zip(prediction_ids, labels, shadow_labels, strict=True):
                    self._items[prediction_id] = RememberedPrediction(
                        label, model, at, shadow_label=other, shadow=shadow
                    )
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
                self.evicted += 1

    def annotate(self, prediction_id: str, **changes: Any) -> None:
        """Record who answered a prediction (hybrid inference); unknown ids are ignored."""
        with self._lock:
            remembered = self._items.get(prediction_id)
            if remembered is not None:
                self._items[prediction_id] = replace(remembered, **changes)

    def pop(self, prediction_id: str) -> RememberedPrediction | None:
        """Return and forget a prediction (feedback counts once per prediction)."""
        with self._lock:
            return self._items.pop(prediction_id, None)

    def restore(self, prediction_id: str, remembered: RememberedPrediction) -> None:
        """Put back a prediction whose feedback was refused (e.g. an unknown label), so it can be retried."""
        with self._lock:
            self._items[prediction_id] = remembered

    def answered(self, prediction_id: str, remembered: RememberedPrediction, actual: Any) -> None:
        """Keep a prediction whose feedback was counted, with its true label, for lineage look-ups."""
        with self._lock:
            self._answered[prediction_id] = replace(remembered, actual=actual)
            while len(self._answered) > self.capacity:
                self._answered.popitem(last=False)

    def get(self, prediction_id: str) -> RememberedPrediction | None:
        """A remembered prediction, with or without feedback (None when unknown or forgotten)."""
        with self._lock:
            return self._items.get(prediction_id) or self._answered.get(prediction_id)

    def __len__(self) -> int:
        return len(self._items)
