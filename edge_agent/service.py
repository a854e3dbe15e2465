"""The inference service: the one object every transport (REST today, others later) calls to predict.

It holds the model being served and swaps it atomically: `predict` takes one reference to the current
`LoadedModel` and uses only that, so a request that started on the old session finishes on it while new
requests see the new one; the old session is freed when its last request is done. No lock on the hot path.

With an A/B split (`set_ab`) each record's request key (a record field, else the request's key) picks its
arm with `contracts.ab.arm_of`; a batch is answered per arm and the answers keep the order of the records.
Request-key fields (`key_fields`, edge_agent/ab_split.py) are dropped before the schema check, during a split
and after it. Every request counts in the window (requests, latency), whichever arm answered it.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from contracts.ab import Arm
from contracts.bundle import Bundle
from contracts.errors import EdgeloopError, NotFoundError, SchemaError
from contracts.logs import log_event
from contracts.manifest import Manifest
from contracts.runtime import OnnxModel, encode_records
from contracts.telemetry import WindowCounter
from edge_agent.ab_split import ABChallenger, KeyFields, rows_of
from edge_agent.errors import ModelNotReady
from edge_agent.feedback import FeedbackStore
from edge_agent.metrics import AgentMetrics
from edge_agent.telemetry import TelemetryReporter

if TYPE_CHECKING:
    from edge_agent.feedback_rows import FeedbackRowSink, RowPolicy
    from edge_agent.hybrid import HybridClient

__all__ = ["ABChallenger", "InferenceService", "LoadedModel", "PredictionBatch"]

logger = logging.getLogger("edgeloop.agent.service")


@dataclass(frozen=True)
class LoadedModel:
    model: OnnxModel
    bundle: Bundle
    counter: WindowCounter | None = None
    """Telemetry counter of this model's traffic (None when telemetry is off); for an A/B challenger, the
    champion's counter, whose window counts the challenger's arm."""
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
        key_fields: KeyFields | None = None,
    ) -> None:
        self._current: LoadedModel | None = None
        self._swap_lock = threading.Lock()
        self._metrics = metrics
        self._telemetry = telemetry
        self.feedback = feedback or FeedbackStore()
        self._counter: tuple[LoadedModel, Any] | None = None
        self._shadow: LoadedModel | None = None
        self.shadow_failures = 0
        self._ab: ABChallenger | None = None
        self.ab_failures = 0
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
                self._ab = replace(self._ab, model=replace(self._ab.model, counter=counter))
        if self._metrics is not None:
            self._metrics.set_model(loaded.manifest)
        return previous

    @property
    def shadow(self) -> LoadedModel | None:
        """The challenger running in shadow beside the served model (it never answers)."""
        return self._shadow

    def set_shadow(self, model: OnnxModel | None, bundle: Bundle | None = None) -> None:
        """Run `model` (a verified bundle) in shadow from now on; None stops the shadow."""
        with self._swap_lock:
            if self._telemetry is not None:
                self._telemetry.set_shadow(None if model is None else model.manifest.version)
            self._shadow = None if model is None or bundle is None else LoadedModel(model, bundle)
        log_event(logger, "shadow model", model=None if model is None else model.manifest.ref)

    @property
    def ab(self) -> ABChallenger | None:
        """The A/B challenger answering a share of the request keys, if a split runs."""
        return self._ab

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
        log_event(logger, "A/B challenger", model=None if model is None else model.manifest.ref,
                  fraction=fraction if model is not None else None, key_field=key_field)  # fmt: skip

    def _shadow_labels(self, shadow: LoadedModel, loaded: LoadedModel, records: Any, feed: Any, labels: list) -> Any:
        try:
            if shadow.manifest.inputs != loaded.manifest.inputs:
                feed = encode_records(records, shadow.manifest.inputs, allow_extra=True)
            shadow_labels = shadow.model.predict_feed(feed).labels.tolist()
        except (EdgeloopError, ValueError, RuntimeError) as exc:  # the shadow must never fail a request
            self.shadow_failures += 1
            if self.shadow_failures == 1 or self.shadow_failures % 1000 == 0:
                log_event(logger, "shadow prediction failed", level=logging.WARNING, error=str(exc),
                          failures=self.shadow_failures)  # fmt: skip
            return None
        if loaded.counter is not None:
            agree = sum(1 for a, b in zip(labels, shadow_labels, strict=True) if a == b)
            loaded.counter.observe_shadow(agree, len(labels) - agree)
        return shadow_labels

    def predict(self, records: Sequence[Mapping[str, Any]], request_key: str | None = None) -> PredictionBatch:
        """Check records against the model's schema and predict them (SchemaError names the bad field).

        With an A/B split, `request_key` (the X-Request-Key header) or each record's key field picks the
        arm; every answer then says its `arm` and `model_version`."""
        loaded = self._current
        if loaded is None:
            raise ModelNotReady("no model is loaded yet: install one with --bundle or publish a desired state")
        started = time.perf_counter()
        ab = self._ab
        if ab is None:
            records = self.key_fields.strip(records, loaded.feature_names)
            return PredictionBatch(loaded, self._answer(loaded, records, None, started))
        arms = ab.arms(records, request_key)
        records = self.key_fields.strip(records, loaded.feature_names)  # keys that are not model inputs
        feed = encode_records(records, loaded.manifest.inputs)  # every record is checked against the champion
        chosen = [i for i, arm in enumerate(arms) if arm == "challenger"]
        answers: list[dict[str, Any]] | None = None
        if chosen:
            answers = self._answer_challenger(ab, loaded, [records[i] for i in chosen], rows_of(feed, chosen))
        if answers is None:  # no challenger record, or it failed: the champion answers all
            return PredictionBatch(loaded, self._answer(loaded, records, feed, started, "champion"))
        if len(chosen) == len(records):
            if loaded.counter is not None:  # the window's own counts are the champion's: only the request
                loaded.counter.observe_request(time.perf_counter() - started)
            return PredictionBatch(loaded, answers)
        taken = set(chosen)
        rest = [i for i in range(len(records)) if i not in taken]
        served = self._answer(loaded, [records[i] for i in rest], rows_of(feed, rest), started, "champion")
        merged: list[dict[str, Any]] = [{}] * len(records)
        for index, answer in zip(chosen, answers, strict=True):
            merged[index] = answer
        for index, answer in zip(rest, served, strict=True):
            merged[index] = answer
        return PredictionBatch(loaded, merged)

    def _answer_challenger(
        self, ab: ABChallenger, loaded: LoadedModel, records: Sequence[Mapping[str, Any]], feed: Any
    ) -> list[dict[str, Any]] | None:
        """The challenger's answers to its arm's records; None when it fails (the champion answers them)."""
        challenger = ab.model
        began = time.perf_counter()
        try:
            if challenger.manifest.inputs != loaded.manifest.inputs:
                feed = encode_records(records, challenger.manifest.inputs, allow_extra=True)
            result = challenger.model.predict_feed(feed)
        except (EdgeloopError, ValueError, RuntimeError) as exc:  # the challenger must never fail a request
            self.ab_failures += 1
            if challenger.counter is not None:  # the cloud's A/B guard reads it (arms.challenger.errors)
                challenger.counter.observe_arm_error("challenger")
            if self.ab_failures == 1 or self.ab_failures % 1000 == 0:
                log_event(logger, "A/B challenger failed, the champion answered", level=logging.WARNING,
                          error=str(exc), failures=self.ab_failures)  # fmt: skip
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
        kept = None if self.row_policy is None else self.row_policy.select(records, challenger.manifest.feature_names)
        self.feedback.remember(ids, labels, challenger, features=kept, arm="challenger")
        if self._metrics is not None:
            manifest = challenger.manifest
            self._metrics.predictions.labels(manifest.name, str(manifest.version)).inc(len(labels))
        return predictions

    def _answer(
        self,
        loaded: LoadedModel,
        records: Sequence[Mapping[str, Any]],
        feed: Any,
        started: float,
        arm: Arm | None = None,
    ) -> list[dict[str, Any]]:
        """The served model's answers (`arm` = "champion" while an A/B split runs)."""
        began = time.perf_counter() if arm is not None else started
        if feed is None:
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
            ended = time.perf_counter()
            loaded.counter.observe(feed, result.labels, ended - started)
            if arm is not None:
                loaded.counter.observe_arm(arm, labels, ended - began)
        if arm is not None:
            version = loaded.manifest.version
            for prediction in predictions:
                prediction["model_version"] = version
                prediction["arm"] = arm
        shadow = self._shadow
        kept = None if self.row_policy is None else self.row_policy.select(records, loaded.manifest.feature_names)
        if shadow is None:
            self.feedback.remember(ids, labels, loaded, features=kept, arm=arm)
        else:
            shadow_labels = self._shadow_labels(shadow, loaded, records, feed, labels)
            self.feedback.remember(ids, labels, loaded, shadow_labels, shadow if shadow_labels else None, kept, arm)
        self._count(loaded, len(predictions))
        return predictions

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
            if remembered.arm is not None:
                loaded.counter.observe_arm_feedback(remembered.arm, actual, remembered.label)
            if remembered.arm != "challenger":  # the window's own confusion is the champion's
                loaded.counter.observe_feedback(actual, remembered.label)
            if remembered.shadow is not None:
                loaded.counter.observe_shadow_feedback(actual, remembered.shadow_label)
        self.feedback.answered(prediction_id, remembered, actual)
        if self.row_sink is not None:
            self.row_sink.add(prediction_id, remembered, actual)
        manifest = loaded.manifest
        answer = {
            "prediction_id": prediction_id,
            "predicted": remembered.label,
            "actual": actual,
            "correct": str(actual) == str(remembered.label),
            "model": manifest.name,
            "model_version": manifest.version,
        }
        if remembered.arm is not None:
            answer["arm"] = remembered.arm
        return answer

    def flush_feedback_rows(self) -> None:
        """Send the feedback rows collected by the last feedback request (opt-in; never fails the request)."""
        if self.row_sink is None:
            return
        try:
            self.row_sink.flush()
        except Exception as exc:  # a full disk must not fail the feedback that was already counted
            log_event(logger, "feedback rows not stored", level=logging.WARNING, error=f"{type(exc).__name__}: {exc}")

    async def resolve_hybrid(self, batch: PredictionBatch, records: Sequence[Mapping[str, Any]]) -> PredictionBatch:
        """Hybrid inference: records the edge model is unsure of (max probability under the threshold) are
        answered by the cloud within the deadline, else by the edge model (`edge_fallback`). Each answer
        says who gave it (`answered_by`); the window counts them."""
        hybrid = self.hybrid
        if hybrid is None:
            return batch
        records = self.key_fields.strip(records, batch.model.feature_names)  # the cloud checks the schema too
        predictions = batch.predictions
        low = [  # an A/B challenger's answers stay its own: the cloud runs the champion's version
            i
            for i, p in enumerate(predictions)
            if max(p["probabilities"].values()) < hybrid.threshold and p.get("arm") != "challenger"
        ]
        counts = {"edge": len(predictions) - len(low)}
        for prediction in predictions:
            prediction["answered_by"] = "edge"
        if low:
            manifest = batch.model.manifest
            answers = await hybrid.ask(manifest.name, manifest.version, [records[i] for i in low])
            source = "edge_fallback" if answers is None else "cloud"
            counts[source] = len(low)
            for position, index in enumerate(low):
                prediction = predictions[index]
                prediction["answered_by"] = source
                if answers is None:
                    self.feedback.annotate(prediction["prediction_id"], answered_by=source)
                    continue
                answer, cloud_model = answers[0][position], answers[1]
                prediction["edge_label"] = prediction["label"]
                prediction["label"] = answer["label"]
                prediction["probabilities"] = answer["probabilities"]
                prediction["cloud_model"] = cloud_model
                self.feedback.annotate(
                    prediction["prediction_id"], answered_by=source, answer=answer["label"], cloud_model=cloud_model
                )
        if batch.model.counter is not None:
            batch.model.counter.observe_answers(counts)
        return batch

    def lineage(self, prediction_id: str) -> dict[str, Any]:
        """From a prediction id back to the model version, its run, training data hash and code version."""
        remembered = self.feedback.get(prediction_id)
        if remembered is None:
            raise NotFoundError(
                f"prediction id '{prediction_id}' is unknown here: it was made on another device, before the agent "
                "restarted, or more than feedback_capacity predictions ago"
            )
        manifest = remembered.model.manifest
        answer: dict[str, Any] = {
            "prediction_id": prediction_id,
            "made_at": datetime.fromtimestamp(remembered.at, UTC).isoformat(timespec="milliseconds"),
            "label": remembered.label,
            "answered_by": remembered.answered_by,
            "answer": remembered.label if remembered.answer is None else remembered.answer,
            "cloud_model": remembered.cloud_model,
            "actual": remembered.actual,
            "model": {
                "name": manifest.name,
                "version": manifest.version,
                "onnx_sha256": manifest.onnx.sha256,
                "bundle": remembered.model.bundle.path.name,
                "created_at": manifest.created_at,
            },
            "lineage": manifest.lineage.model_dump(),
            "shadow": None,
            "arm": remembered.arm,
        }
        if remembered.shadow is not None:
            shadow = remembered.shadow.manifest
            answer["shadow"] = {"model": shadow.ref, "label": remembered.shadow_label, "run_id": shadow.lineage.run_id}
        return answer

    def _count(self, loaded: LoadedModel, rows: int) -> None:
        if self._metrics is None:
            return
        cached = self._counter
        if cached is None or cached[0] is not loaded:
            manifest = loaded.manifest
            cached = (loaded, self._metrics.predictions.labels(manifest.name, str(manifest.version)))
            self._counter = cached
        cached[1].inc(rows)
