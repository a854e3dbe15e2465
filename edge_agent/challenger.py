"""A challenger: a second model beside the one being served, behind one small interface (River's shape: one
class per mode, no `if mode ==` in the service).

    ShadowChallenger (edge_agent/shadow.py)   answers nothing; predicts every record the served model answers
                                              and counts how often they agree (`observe`)
    ABChallenger     (edge_agent/ab_split.py) answers its share of the request keys itself (`take`, `answer`);
                                              the served model's answers are tagged with the champion's arm

`InferenceService.predict` runs the same steps whatever challengers run: (1) the first challenger that `take`s
records answers them (`answer`; None when it failed, then the served model answers them), (2) the served model
answers the rest, tagged with `champion_arm`, (3) every challenger `observe`s those answers (a shadow's labels
are kept with the prediction for feedback). The base class's hooks do nothing (take none, answer none, observe
none), so each mode overrides only what it does. A challenger never fails a request: it counts its `failures`
and logs the first one and every 1000th.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from contracts.ab import Arm
from contracts.logs import log_event
from contracts.telemetry import WindowCounter
from edge_agent.loaded import LoadedModel

__all__ = ["Answered", "Challenger", "Observed"]

logger = logging.getLogger("edgeloop.agent.service")  # the service's log, where these lines always were


@dataclass(frozen=True)
class Answered:
    """A challenger's answers to the records it took, in their order (ids and labels for the feedback store)."""

    predictions: list[dict[str, Any]]
    prediction_ids: list[str]
    labels: list[Any]


@dataclass(frozen=True)
class Observed:
    """A challenger's own labels for the records the served model answered (kept for feedback)."""

    model: LoadedModel
    labels: list[Any]


@dataclass
class Challenger:
    """The interface; each hook does nothing here (see the module doc)."""

    model: LoadedModel
    failures: int = field(default=0, kw_only=True, compare=False)
    """Predictions that failed on this challenger (the request was answered by the served model)."""
    arm: Arm | None = field(default=None, init=False)
    """The arm its own answers are tagged with (A/B: challenger)."""
    champion_arm: Arm | None = field(default=None, init=False)
    """The arm the served model's answers are tagged with while it runs (A/B: champion)."""

    def take(self, records: Sequence[Mapping[str, Any]], request_key: str | None) -> list[int]:
        """Indexes of the records it answers itself, in order."""
        return []

    def answer(self, champion: LoadedModel, records: Sequence[Mapping[str, Any]], feed: Any) -> Answered | None:
        """Its answers to the records it took (`feed`: their rows encoded for the champion); None when it failed."""
        return None

    def observe(
        self, champion: LoadedModel, records: Sequence[Mapping[str, Any]], feed: Any, labels: list[Any]
    ) -> Observed | None:
        """Runs after the served model answered `records` with `labels`; its own labels, or None."""
        return None

    def rebind(self, counter: WindowCounter | None) -> Challenger:
        """Itself, counted in a new champion's telemetry windows (after a swap); the base has nothing to rebind."""
        return self

    def failed(self, event: str, exc: Exception) -> None:
        """Count a failed prediction; log the first one and every 1000th (a challenger never fails a request)."""
        self.failures += 1
        if self.failures == 1 or self.failures % 1000 == 0:
            log_event(logger, event, level=logging.WARNING, error=str(exc), failures=self.failures)
