"""Shadow challenger: a verified bundle that predicts every record the served model answers, never answering
itself. Its labels are counted against the served model's (agree / disagree in the telemetry window) and kept
with each prediction, so feedback later scores both (the cloud's shadow canary compares their accuracy).

A shadow whose inputs differ from the served model's encodes the records again for itself; a shadow that fails
(bad schema, runtime error) is counted and logged, and the request is answered as if it were not there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from contracts.errors import EdgeloopError
from contracts.runtime import encode_records
from edge_agent.challenger import Challenger, Observed
from edge_agent.loaded import LoadedModel

__all__ = ["ShadowChallenger"]


@dataclass
class ShadowChallenger(Challenger):
    def observe(
        self, champion: LoadedModel, records: Sequence[Mapping[str, Any]], feed: Any, labels: list[Any]
    ) -> Observed | None:
        shadow = self.model
        try:
            if shadow.manifest.inputs != champion.manifest.inputs:
                feed = encode_records(records, shadow.manifest.inputs, allow_extra=True)
            shadow_labels = shadow.model.predict_feed(feed).labels.tolist()
        except (EdgeloopError, ValueError, RuntimeError) as exc:  # the shadow must never fail a request
            self.failed("shadow prediction failed", exc)
            return None
        if champion.counter is not None:
            agree = sum(1 for a, b in zip(labels, shadow_labels, strict=True) if a == b)
            champion.counter.observe_shadow(agree, len(labels) - agree)
        return Observed(shadow, shadow_labels)
