"""Remember recent predictions so feedback (the true label, maybe much later) can be matched to them.

A bounded in-memory map, oldest evicted first (default 100,000 predictions). Memory, not disk, because it
is written on every request; feedback for a prediction made before a restart gets a clear 404.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["FeedbackStore", "RememberedPrediction"]


@dataclass(frozen=True)
class RememberedPrediction:
    label: object
    model_name: str
    model_version: int
    counter_key: int
    """Identity of the telemetry counter (model generation) the prediction was counted in."""


class FeedbackStore:
    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, RememberedPrediction] = OrderedDict()
        self._lock = threading.Lock()
        self.evicted = 0

    def remember(self, prediction_ids: Sequence[str], labels: Sequence[object], entry: RememberedPrediction) -> None:
        with self._lock:
            for prediction_id, label in zip(prediction_ids, labels, strict=True):
                self._items[prediction_id] = RememberedPrediction(
                    label, entry.model_name, entry.model_version, entry.counter_key
                )
            overflow = len(self._items) - self.capacity
            for _ in range(max(0, overflow)):
                self._items.popitem(last=False)
                self.evicted += 1

    def pop(self, prediction_id: str) -> RememberedPrediction | None:
        """Return and forget a prediction (feedback counts once per prediction)."""
        with self._lock:
            return self._items.pop(prediction_id, None)

    def __len__(self) -> int:
        return len(self._items)
