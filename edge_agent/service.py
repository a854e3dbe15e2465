"""The inference service: the one object every transport (REST today, others later) calls to predict.

It holds the model being served and swaps it atomically: `predict` takes one reference to the current
`LoadedModel` (edge_agent/loaded.py) and uses only that, so a request that started on the old session finishes
on it while new requests see the new one; the old session is freed when its last request is done. No lock on
the hot path.

Challengers run beside the served model behind one interface (edge_agent/challenger.py): a shadow
(`set_shadow`, edge_agent/shadow.py) and an A/B split (`set_ab`, edge_agent/ab_split.py); `predict` runs the
same steps whichever run. Request-key fields (`key_fields`) are dropped before the schema check, during a split
and after it. Every request counts in the window (requests, latency), whoever answered it. Feedback, lineage
and hybrid answers live in their own modules (feedback_labels.py, lineage.py, hybrid_answers.py); the methods
here hand off to them.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from contracts.ab import Arm
from contracts.bundle import Bundle
from contracts.errors import EdgeloopError
from contracts.logs import log_event
from contracts.runtime import OnnxModel, Prediction, encode_records
from edge_agent.ab_split import ABChallenger, KeyFields, rows_of
from edge_agent.challenger import Challenger, Observed
from edge_agent.errors import ModelNotReady
from edge_agent.feedback import FeedbackStore
from edge_agent.feedback_labels import record_feedback
from edge_agent.feedback_rows import FeedbackRowSink, RowPolicy
from edge_agent.hybrid import HybridClient
from edge_agent.hybrid_answers import resolve_hybrid
from edge_agent.lineage import prediction_lineage
from edge_agent.loaded import LoadedModel, PredictionBatch
from edge_agent.metrics import AgentMetrics
from edge_agent.shadow import ShadowChallenger
from edge_agent.telemetry import TelemetryReporter

__all__ = ["InferenceService"]

logger = logging.getLogger("edgeloop.agent.service")


class InferenceService:
    def __init__(
        self,
        metrics: AgentMetrics | None = None,
        telemetry: TelemetryReporter | None = None,
        feedback: FeedbackStore | None = None,
        key_fields: KeyFields | None = None,
    ) -> None:
        self._current: LoadedModel | None = None
        self._swap_lock = threading.Lock()
        self._metrics = metrics
        self._telemetry = telemetry
        self.feedback = feedback or FeedbackStore()
        self._counter: tuple[LoadedModel, Any] | None = None
        self._shadow: ShadowChallenger | None = None
        self._ab: ABChallenger | None = None
        self._challengers: tuple[Challenger, ...] = ()
        """The running challengers, A/B first (it answers records; a shadow only observes)."""
        self._champion_arm: Arm | None = None
        self.key_fields = key_fields or KeyFields()
        """Request-key fields accepted in a record and dropped before encoding (setting + every split's field)."""
        self.hybrid: HybridClient | None = None
        """Set when hybrid inference is on: low-confidence records are sent to the cloud (resolve_hybrid)."""
        self.row_policy: RowPolicy | None = None
        self.row_sink: FeedbackRowSink | None = None
        """Set when feedback rows are on (opt-in): sampled predictions keep their fields, feedback sends them."""

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
            if self._ab is not None:  # the challenger's arm is counted in the new champion's windows
                self._ab = self._ab.rebind(counter)
            self._running_changed()
        if self._metrics is not None:
            self._metrics.set_model(loaded.manifest)
        return previous

    def _running_changed(self) -> None:
        """Refresh the snapshot `predict` reads (under the swap lock)."""
        self._challengers = tuple(c for c in (self._ab, self._shadow) if c is not None)
        self._champion_arm = next((c.champion_arm for c in self._challengers if c.champion_arm), None)

    @property
    def shadow(self) -> LoadedModel | None:
        """The challenger running in shadow beside the served model (it never answers)."""
        return None if self._shadow is None else self._shadow.model

    @property
    def shadow_failures(self) -> int:
        return 0 if self._shadow is None else self._shadow.failures

    def set_shadow(self, model: OnnxModel | None, bundle: Bundle | None = None) -> None:
        """Run `model` (a verified bundle) in shadow from now on; None stops the shadow."""
        with self._swap_lock:
            if self._telemetry is not None:
                self._telemetry.set_shadow(None if model is None else model.manifest.version)
            self._shadow = None if model is None or bundle is None else ShadowChallenger(LoadedModel(model, bundle))
            self._running_changed()
        log_event(logger, "shadow model", model=None if model is None else model.manifest.ref)

    @property
    def ab(self) -> ABChallenger | None:
        """The A/B challenger answering a share of the request keys, if a split runs."""
        return self._ab

    @property
    def ab_failures(self) -> int:
        return 0 if self._ab is None else self._ab.failures

    def set_ab(
        self, model: OnnxModel | None, bundle: Bundle | None = None, fraction: float = 0.0, key_field: str | None = None
    ) -> None:
        """Split traffic with `model` (a verified bundle) from now on; None stops the split."""
        with self._swap_lock:
            if model is None or bundle is None:
                self._ab = None
            else:
                counter = self._current.counter if self._current is not None else None
                self._ab = ABChallenger(LoadedModel(model, bundle, counter), fraction, key_field)
                if key_field is not None:  # accepted from now on, also after the split stops
                    self.key_fields.add(key_field)
            if self._telemetry is not None:
                self._telemetry.set_ab(None if self._ab is None else self._ab.model.manifest.version)
            self._running_changed()
        log_event(logger, "A/B challenger", model=None if model is None else model.manifest.ref,
                  fraction=fraction if model is not None else None, key_field=key_field)  # fmt: skip

    def predict(self, records: Sequence[Mapping[str, Any]], request_key: str | None = None) -> PredictionBatch:
        """Check records against the model's schema and predict them (SchemaError names the bad field).

        With an A/B split, `request_key` (the X-Request-Key header) or each record's key field picks the
        arm; every answer then says its `arm` and `model_version`."""
        loaded = self._current
        if loaded is None:
            raise ModelNotReady("no model is loaded yet: install one with --bundle or publish a desired state")
        started = time.perf_counter()
        challengers, champion_arm = self._challengers, self._champion_arm
        owner, taken = None, []
        for challenger in challengers:  # the first that takes records answers them
            taken = challenger.take(records, request_key)
            if taken:
                owner = challenger
                break
        records = self.key_fields.strip(records, loaded.feature_names)  # keys that are not model inputs
        feed = encode_records(records, loaded.manifest.inputs)  # every record is checked against the champion
        answered = None
        if owner is not None:
            mine = [records[i] for i in taken]
            answered = owner.answer(loaded, mine, rows_of(feed, taken))
            if answered is not None:
                self._remember(owner.model, mine, answered.prediction_ids, answered.labels, arm=owner.arm)
        if answered is None:  # nobody else answers, or the challenger failed: the champion answers all
            return PredictionBatch(loaded, self._answer(loaded, records, feed, started, champion_arm))
        if len(taken) == len(records):
            if loaded.counter is not None:  # the window's own counts are the champion's: only the request
                loaded.counter.observe_request(time.perf_counter() - started)
            return PredictionBatch(loaded, answered.predictions)
        chosen = set(taken)
        rest = [i for i in range(len(records)) if i not in chosen]
        served = self._answer(loaded, [records[i] for i in rest], rows_of(feed, rest), started, champion_arm)
        merged: list[dict[str, Any]] = [{}] * len(records)
        for index, answer in zip(taken, answered.predictions, strict=True):
            merged[index] = answer
        for index, answer in zip(rest, served, strict=True):
            merged[index] = answer
        return PredictionBatch(loaded, merged)

    def predict_many(self, requests: Sequence[Sequence[Mapping[str, Any]]]) -> list[PredictionBatch | EdgeloopError]:
        """Several requests' records in one model call (edge_agent/coalesce.py gathers concurrent requests): each
        request gets exactly what `predict(records)` would answer it alone, or its own error (a bad record fails
        only its request), and counts once in the window. With a challenger running (its A/B key is per request)
        each request is predicted on its own."""
        loaded = self._current
        if loaded is None or self._challengers or len(requests) == 1:
            return [_attempt(self.predict, records) for records in requests]
        started = time.perf_counter()
        answered: list[PredictionBatch | EdgeloopError] = []
        taken: list[tuple[int, Sequence[Mapping[str, Any]], dict[str, np.ndarray]]] = []
        for index, records in enumerate(requests):
            try:
                stripped = self.key_fields.strip(records, loaded.feature_names)
                taken.append((index, stripped, encode_records(stripped, loaded.manifest.inputs)))
            except EdgeloopError as exc:
                answered.append(exc)
                continue
            answered.append(PredictionBatch(loaded, []))  # filled below
        if not taken:
            return answered
        feeds = [feed for _, _, feed in taken]
        joined = {name: np.concatenate([feed[name] for feed in feeds]) for name in feeds[0]}
        result = loaded.model.predict_feed(joined)
        start = 0
        for index, records, feed in taken:
            end = start + len(records)
            rows = Prediction(labels=result.labels[start:end], probabilities=result.probabilities[start:end])
            answers = self._served(loaded, records, feed, rows, started, arm=None, began=started)
            answered[index] = PredictionBatch(loaded, answers)
            start = end
        return answered

    def _answer(
        self, loaded: LoadedModel, records: Sequence[Mapping[str, Any]], feed: Any, started: float, arm: Arm | None
    ) -> list[dict[str, Any]]:
        """The served model's answers (`arm` = "champion" while an A/B split runs); the challengers observe them."""
        began = time.perf_counter() if arm is not None else started
        return self._served(loaded, records, feed, loaded.model.predict_feed(feed), started, arm=arm, began=began)

    def _served(
        self,
        loaded: LoadedModel,
        records: Sequence[Mapping[str, Any]],
        feed: Any,
        result: Prediction,
        started: float,
        *,
        arm: Arm | None,
        began: float,
    ) -> list[dict[str, Any]]:
        """Answers from the model's output for `records`: ids, counts (telemetry, metrics), feedback memory."""
        keys = loaded.class_keys
        labels = result.labels.tolist()
        ids = [uuid.uuid4().hex for _ in labels]
        predictions = [
            {"prediction_id": pid, "label": label, "probabilities": dict(zip(keys, row, strict=True))}
            for pid, label, row in zip(ids, labels, result.probabilities.tolist(), strict=True)
        ]
        if loaded.counter is not None:
            ended = time.perf_counter()
            loaded.counter.observe(feed, result.labels, ended - started)
            if arm is not None:
                loaded.counter.observe_arm(arm, labels, ended - began)
        if arm is not None:
            version = loaded.manifest.version
            for prediction in predictions:
                prediction["model_version"] = version
                prediction["arm"] = arm
        observed: Observed | None = None
        for challenger in self._challengers:
            observed = challenger.observe(loaded, records, feed, labels) or observed
        self._remember(loaded, records, ids, labels, arm=arm, observed=observed)
        return predictions

    def _remember(
        self,
        loaded: LoadedModel,
        records: Sequence[Mapping[str, Any]],
        ids: list[str],
        labels: list[Any],
        *,
        arm: Arm | None,
        observed: Observed | None = None,
    ) -> None:
        """Keep the predictions for feedback and lineage (with the kept fields when sampled); count them."""
        kept = None if self.row_policy is None else self.row_policy.select(records, loaded.manifest.feature_names)
        if observed is None:
            self.feedback.remember(ids, labels, loaded, features=kept, arm=arm)
        else:
            self.feedback.remember(ids, labels, loaded, observed.labels, observed.model, kept, arm)
        self._count(loaded, len(ids))

    def record_error(self, kind: str, loaded: LoadedModel | None = None) -> None:
        """Count a refused or failed request in the current telemetry window."""
        loaded = loaded or self._current
        if loaded is not None and loaded.counter is not None:
            loaded.counter.observe_error(kind)

    def feedback_for(self, prediction_id: str, actual: Any) -> dict[str, Any]:
        """Record the true label of an earlier prediction (edge_agent/feedback_labels.py)."""
        return record_feedback(self.feedback, self.row_sink, prediction_id, actual)

    def flush_feedback_rows(self) -> None:
        """Send the feedback rows collected by the last feedback request (opt-in; never fails the request)."""
        if self.row_sink is None:
            return
        try:
            self.row_sink.flush()
        except Exception as exc:  # a full disk must not fail the feedback that was already counted
            log_event(logger, "feedback rows not stored", level=logging.WARNING, error=f"{type(exc).__name__}: {exc}")

    async def resolve_hybrid(self, batch: PredictionBatch, records: Sequence[Mapping[str, Any]]) -> PredictionBatch:
        """Hybrid inference (edge_agent/hybrid_answers.py): the cloud answers the records the edge is unsure of."""
        if self.hybrid is None:
            return batch
        return await resolve_hybrid(self.hybrid, batch, records, feedback=self.feedback, key_fields=self.key_fields)

    def lineage(self, prediction_id: str) -> dict[str, Any]:
        """From a prediction id back to the model version, its run, training data hash and code version."""
        return prediction_lineage(self.feedback, prediction_id)

    def _count(self, loaded: LoadedModel, rows: int) -> None:
        if self._metrics is None:
            return
        cached = self._counter
        if cached is None or cached[0] is not loaded:
            manifest = loaded.manifest
            cached = (loaded, self._metrics.predictions.labels(manifest.name, str(manifest.version)))
            self._counter = cached
        cached[1].inc(rows)


def _attempt(
    predict: Callable[[Sequence[Mapping[str, Any]]], PredictionBatch], records: Sequence[Mapping[str, Any]]
) -> PredictionBatch | EdgeloopError:
    try:
        return predict(records)
    except EdgeloopError as exc:
        return exc
