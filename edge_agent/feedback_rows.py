"""Opt-in feedback rows for retraining: when feedback labels a prediction, the kept input fields of that
prediction go to the cloud with the true label (`edgeloop/v1/devices/{device}/feedback`, through the outbox).

Off by default (`feedback_rows`). Data minimisation: only `feedback_rows_fields` are kept (default: every
model input), only a `feedback_rows_sample_rate` share of predictions keeps them at all (decided when the
prediction is made, so unsampled predictions cost no memory), and at most `feedback_rows_max_per_hour` rows
leave the device per hour; rows are also held back while the outbox is nearly full (telemetry comes first).
Rows not sent are counted in `dropped` of the next message, never silently.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from contracts.logs import log_event
from contracts.messages import FeedbackRow, FeedbackRows
from contracts.topics import device_topic

if TYPE_CHECKING:
    from edge_agent.feedback import RememberedPrediction
    from edge_agent.outbox import Outbox

__all__ = ["FeedbackRowSink", "RowPolicy"]

logger = logging.getLogger("edgeloop.agent.feedback_rows")


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class RowPolicy:
    """Which predictions keep their input fields (sampling) and which fields they keep."""

    def __init__(self, sample_rate: float = 1.0, fields: Sequence[str] | None = None, seed: int | None = None) -> None:
        self.sample_rate = sample_rate
        self.fields = None if fields is None else tuple(fields)
        self._random = random.Random(seed)

    def select(self, records: Sequence[Mapping[str, Any]], features: Sequence[str]) -> list[dict[str, Any] | None]:
        """For each record: the kept fields (missing ones as None), or None when it is not sampled."""
        names = [name for name in features if self.fields is None or name in self.fields]
        rate, draw = self.sample_rate, self._random.random
        return [
            {name: record.get(name) for name in names} if rate >= 1.0 or draw() < rate else None for record in records
        ]


class FeedbackRowSink:
    """Collects labelled rows (thread-safe) and writes them to the outbox, one message per model version."""

    def __init__(
        self,
        outbox: Outbox,
        device_id: str,
        group: str,
        max_per_hour: int = 1000,
        on_append: Callable[[], None] | None = None,
    ) -> None:
        self.outbox = outbox
        self.device_id = device_id
        self.group = group
        self.max_per_hour = max_per_hour
        self.on_append = on_append
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, int], list[FeedbackRow]] = {}
        self._hour_start = time.monotonic()
        self._hour_count = 0
        self.sent = 0
        self.dropped = 0

    def add(self, prediction_id: str, remembered: RememberedPrediction, actual: Any) -> None:
        if remembered.features is None:
            return
        manifest = remembered.model.manifest
        with self._lock:
            now = time.monotonic()
            if now - self._hour_start >= 3600:
                self._hour_start, self._hour_count = now, 0
            if self._hour_count >= self.max_per_hour:
                self.dropped += 1
                return
            self._hour_count += 1
            row = FeedbackRow(
                prediction_id=prediction_id,
                made_at=_iso(remembered.at),
                predicted=remembered.label,
                actual=actual,
                features=remembered.features,
            )
            self._pending.setdefault((manifest.name, manifest.version), []).append(row)

    def flush(self) -> int:
        """Write what was collected; returns the number of rows written (0 when held back or nothing)."""
        with self._lock:
            pending, self._pending = self._pending, {}
            if not pending:
                return 0
            if self.outbox.size() >= self.outbox.max_messages * 0.9:  # leave the room to telemetry and events
                lost = sum(len(rows) for rows in pending.values())
                self.dropped += lost
                log_event(logger, "feedback rows held back: outbox nearly full", level=logging.WARNING, rows=lost)
                return 0
            written = 0
            dropped = self.dropped
            for (name, version), rows in pending.items():

                def build(seq: int, name: str = name, version: int = version, rows: list = rows) -> bytes:
                    message = FeedbackRows(
                        device_id=self.device_id, group=self.group, seq=seq, epoch=self.outbox.epoch, model_name=name,
                        model_version=version, rows=rows, dropped=dropped, sent_at=_iso(time.time()),
                    )  # fmt: skip
                    return orjson.dumps(message.model_dump(mode="json"))

                self.outbox.append("feedback", device_topic(self.device_id, "feedback"), build)
                written += len(rows)
            self.sent += written
        if self.on_append is not None:
            self.on_append()
        return written
