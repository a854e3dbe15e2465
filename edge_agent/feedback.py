"""Remember recent predictions so feedback (the true label, maybe much later) can be matched to them.

A bounded in-memory map, oldest evicted first (default 100,000 predictions). Memory, not disk, because it
is written on every request; feedback for a prediction made before a restart gets a clear 404. Each entry
keeps the model that made the prediction, so feedback is counted for that model version even after a switch.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edge_agent.service import LoadedModel

__all__ = ["FeedbackStore", "RememberedPrediction"]


@dataclass(frozen=True)
class RememberedPrediction:
    label: Any
    model: LoadedModel


class FeedbackStore:
    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, RememberedPrediction] = OrderedDict()
        self._lock = threading.Lock()
        self.evicted = 0

    def remember(self, prediction_ids: Sequence[str], labels: Sequence[Any], model: LoadedModel) -> None:
        with self._lock:
            for prediction_id, label in zip(prediction_ids, labels, strict=True):
                self._items[prediction_id] = RememberedPrediction(label, model)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
                self.evicted += 1

    def pop(self, prediction_id: str) -> RememberedPrediction | None:
        """Return and forget a prediction (feedback counts once per prediction)."""
        with self._lock:
            return self._items.pop(prediction_id, None)

    def restore(self, prediction_id: str, remembered: RememberedPrediction) -> None:
        """Put back a prediction whose feedback was refused (e.g. an unknown label), so it can be retried."""
        with self._lock:
            self._items[prediction_id] = remembered

    def __len__(self) -> int:
        return len(self._items)
