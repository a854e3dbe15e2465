"""A/B split on the agent: the challenger that answers its share of the request keys, and the request-key
fields the agent accepts.

    ab = ABChallenger(challenger, fraction=0.2, key_field="machine_id")
    taken = ab.take(records, request_key)            # indexes of the challenger's records (contracts.ab)
    records = key_fields.strip(records, features)    # key fields dropped before the schema check

Each record's arm comes from its key field's value when the split has one, else from the request's key
(X-Request-Key), else champion. The challenger answers its records itself (`answer`, tagged `arm: challenger`
and its `model_version`); when it fails, the champion answers them and the arm's error is counted for the
cloud's A/B guard. Its counter is the champion's (one telemetry window, one arm per side).

A request-key field (e.g. `machine_id`) is not a model input, so the strict schema check would refuse it as
an unknown field. `KeyFields` is the set the agent accepts and drops before encoding, on /v1/predict and
/v1/explain alike: the `request_key_fields` setting plus the `key_field` of every split started since the
agent started. A field stays accepted after its split stops, so clients told to send it are not refused
after a rollback or a promotion; the setting makes that survive a restart. A key field that is an input of
the served model is never dropped.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from contracts.ab import Arm, arm_of, key_text
from contracts.errors import EdgeloopError
from contracts.runtime import encode_records
from contracts.telemetry import WindowCounter
from edge_agent.challenger import Answered, Challenger
from edge_agent.loaded import LoadedModel

__all__ = ["ABChallenger", "KeyFields", "rows_of"]


@dataclass
class ABChallenger(Challenger):
    """An A/B challenger and its split (see contracts.messages.ABSplit)."""

    fraction: float = 0.0
    key_field: str | None = None
    arm: Arm | None = field(default="challenger", init=False)
    champion_arm: Arm | None = field(default="champion", init=False)

    def arms(self, records: Sequence[Mapping[str, Any]], request_key: str | None) -> list[Arm]:
        """The arm of each record: its key field's value when set, else the request's key, else champion."""
        key_field, fraction = self.key_field, self.fraction
        if key_field is None:
            return [arm_of(request_key, fraction)] * len(records)
        arms: list[Arm] = []
        for record in records:
            own = key_text(record.get(key_field)) if isinstance(record, Mapping) else None
            arms.append(arm_of(own if own is not None else request_key, fraction))
        return arms

    def take(self, records: Sequence[Mapping[str, Any]], request_key: str | None) -> list[int]:
        return [i for i, arm in enumerate(self.arms(records, request_key)) if arm == "challenger"]

    def answer(self, champion: LoadedModel, records: Sequence[Mapping[str, Any]], feed: Any) -> Answered | None:
        challenger = self.model
        began = time.perf_counter()
        try:
            if challenger.manifest.inputs != champion.manifest.inputs:
                feed = encode_records(records, challenger.manifest.inputs, allow_extra=True)
            result = challenger.model.predict_feed(feed)
        except (EdgeloopError, ValueError, RuntimeError) as exc:  # the challenger must never fail a request
            if challenger.counter is not None:  # the cloud's A/B guard reads it (arms.challenger.errors)
                challenger.counter.observe_arm_error("challenger")
            self.failed("A/B challenger failed, the champion answered", exc)
            return None
        labels = result.labels.tolist()
        ids = [uuid.uuid4().hex for _ in labels]
        keys, version = challenger.class_keys, challenger.manifest.version
        predictions = [
            {
                "prediction_id": pid,
                "label": label,
                "probabilities": dict(zip(keys, row, strict=True)),
                "model_version": version,
                "arm": "challenger",
            }
            for pid, label, row in zip(ids, labels, result.probabilities.tolist(), strict=True)
        ]
        if challenger.counter is not None:
            challenger.counter.observe_arm("challenger", labels, time.perf_counter() - began)
        return Answered(predictions, ids, labels)

    def rebind(self, counter: WindowCounter | None) -> ABChallenger:
        """The challenger's arm is counted in the new champion's windows."""
        return replace(self, model=replace(self.model, counter=counter), failures=self.failures)


class KeyFields:
    """Record fields that are request keys, accepted in a request and dropped before encoding (module doc)."""

    def __init__(self, configured: Iterable[str] = ()) -> None:
        self.configured = frozenset(configured)
        self._fields = self.configured
        self._lock = threading.Lock()

    @property
    def fields(self) -> frozenset[str]:
        return self._fields

    def add(self, field: str) -> None:
        """Accept `field` from now on (a split keyed by it started); never removed while the agent runs."""
        with self._lock:
            self._fields = self._fields | {field}

    def strip(self, records: Sequence[Any], inputs: frozenset[str]) -> Sequence[Any]:
        """`records` without the key fields that are not model `inputs` (copies only the records holding one)."""
        fields = self._fields
        if not fields:
            return records
        drop = fields - inputs
        if not drop or not any(isinstance(r, Mapping) and not drop.isdisjoint(r) for r in records):
            return records
        return [
            {k: v for k, v in r.items() if k not in drop} if isinstance(r, Mapping) and not drop.isdisjoint(r) else r
            for r in records
        ]


def rows_of(feed: Mapping[str, Any], rows: list[int]) -> dict[str, Any]:
    """The ONNX feed of some records of a batch (numpy fancy indexing per input)."""
    return {name: values[rows] for name, values in feed.items()}
