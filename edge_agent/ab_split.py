"""A/B split on the agent: which arm answers each record, and the request-key fields the agent accepts.

    ab = ABChallenger(challenger, fraction=0.2, key_field="machine_id")
    arms = ab.arms(records, request_key)             # "champion" / "challenger" per record (contracts.ab)
    records = key_fields.strip(records, features)    # key fields dropped before the schema check

A request-key field (e.g. `machine_id`) is not a model input, so the strict schema check would refuse it as
an unknown field. `KeyFields` is the set the agent accepts and drops before encoding, on /v1/predict and
/v1/explain alike: the `request_key_fields` setting plus the `key_field` of every split started since the
agent started. A field stays accepted after its split stops, so clients told to send it are not refused
after a rollback or a promotion; the setting makes that survive a restart. A key field that is an input of
the served model is never dropped.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from contracts.ab import Arm, arm_of, key_text

if TYPE_CHECKING:
    from edge_agent.service import LoadedModel

__all__ = ["ABChallenger", "KeyFields", "rows_of"]


@dataclass(frozen=True)
class ABChallenger:
    """An A/B challenger and its split (see contracts.messages.ABSplit)."""

    model: LoadedModel
    fraction: float
    key_field: str | None = None

    def arms(self, records: Sequence[Mapping[str, Any]], request_key: str | None) -> list[Arm]:
        """The arm of each record: its key field's value when set, else the request's key, else champion."""
        field, fraction = self.key_field, self.fraction
        if field is None:
            return [arm_of(request_key, fraction)] * len(records)
        arms: list[Arm] = []
        for record in records:
            own = key_text(record.get(field)) if isinstance(record, Mapping) else None
            arms.append(arm_of(own if own is not None else request_key, fraction))
        return arms


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
