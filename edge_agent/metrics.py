"""Prometheus metrics of one agent, in a private registry (several agents can live in one test process).

Names follow the usual conventions so common dashboards work:

    http_request_duration_seconds{model,route}   histogram, every HTTP request (route = path template or "other")
    edgeloop_requests_total{route,code}          counter of HTTP requests by status code
    edgeloop_predictions_total{model,version}    records predicted
    edgeloop_prediction_errors_total{kind}       refused or failed predictions (schema_error, malformed_body, ...)
    edgeloop_model_info{name,version,sha256}     1 for the model being served
    edgeloop_model_updates_total{outcome}        deployed, rolled_back, unchanged, rejected
    edgeloop_runtime_info{runtime}               1 for the runtime that serves models: onnxruntime or numpy
    edgeloop_feature_psi{feature}                PSI of each feature over the last telemetry window
    edgeloop_feature_drift_p_value{feature}      its chi-square p-value, adjusted across features (1 = too few records)
    edgeloop_feature_drifted{feature}            1 when PSI >= psi_significant and that p-value < drift_alpha
    edgeloop_prediction_psi                      PSI of the predicted classes over the last window
    edgeloop_feedback_accuracy                   accuracy over the feedback of the last window (when any)
    edgeloop_outbox_pending_messages             messages in the on-disk outbox, not yet delivered
    edgeloop_outbox_refused_messages             of those, messages whose last publish the broker refused
    edgeloop_outbox_unacknowledged_messages      of those, broker-acknowledged ones the cloud has not acknowledged
    edgeloop_outbox_unacknowledged_oldest_seconds  age of the oldest of them (0 when none)
    edgeloop_outbox_refused_total{stream,code}   publishes the broker refused (MQTT 5 PUBACK reason code >= 0x80)
    process_*                                    RSS, CPU, open files of the agent process
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from contracts.manifest import Manifest
from contracts.telemetry import DriftScore, WindowCounts

if TYPE_CHECKING:
    from edge_agent.outbox import Outbox

__all__ = ["CONTENT_TYPE_LATEST", "AgentMetrics", "error_kind"]

_BUCKETS = (0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def error_kind(exc: BaseException) -> str:
    """SchemaError -> schema_error, PayloadTooLarge -> payload_too_large."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(exc).__name__).lower()


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.request_duration = Histogram(
            "http_request_duration_seconds",
            "Time from request start to the end of the response, by model and route.",
            ["model", "route"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.requests = Counter(
            "edgeloop_requests", "HTTP requests by route and status code.", ["route", "code"], registry=self.registry
        )
        self.predictions = Counter(
            "edgeloop_predictions", "Records predicted.", ["model", "version"], registry=self.registry
        )
        self.prediction_errors = Counter(
            "edgeloop_prediction_errors", "Predictions refused or failed, by kind.", ["kind"], registry=self.registry
        )
        self.model_info = Gauge(
            "edgeloop_model_info", "The model being served (value 1).", ["name", "version", "sha256"],
            registry=self.registry,
        )  # fmt: skip
        self.runtime_info = Gauge(
            "edgeloop_runtime_info", "The model runtime serving (value 1): onnxruntime or numpy.", ["runtime"],
            registry=self.registry,
        )  # fmt: skip
        self.updates = Counter(
            "edgeloop_model_updates", "Model update attempts by outcome.", ["outcome"], registry=self.registry
        )
        self.trusted_key = Gauge(
            "edgeloop_trusted_key", "A public key bundles are verified with (value 1; two during a key rotation).",
            ["key_id"], registry=self.registry,
        )  # fmt: skip
        self.feature_psi = Gauge(
            "edgeloop_feature_psi", "PSI of each feature over the last telemetry window.", ["feature"],
            registry=self.registry,
        )  # fmt: skip
        self.feature_p_value = Gauge(
            "edgeloop_feature_drift_p_value",
            "Chi-square p-value of each feature over the last window, adjusted across features (1: too few records).",
            ["feature"],
            registry=self.registry,
        )
        self.feature_drifted = Gauge(
            "edgeloop_feature_drifted",
            "1 when the feature drifted over the last window: PSI >= psi_significant and p-value < drift_alpha.",
            ["feature"],
            registry=self.registry,
        )
        self.prediction_psi = Gauge(
            "edgeloop_prediction_psi", "PSI of the predicted classes over the last window.", registry=self.registry
        )
        self.feedback_accuracy = Gauge(
            "edgeloop_feedback_accuracy", "Accuracy over the last window's feedback.", registry=self.registry
        )
        self.outbox_refused = Counter(
            "edgeloop_outbox_refused", "Publishes the broker refused (PUBACK reason code >= 0x80); kept in the outbox.",
            ["stream", "code"], registry=self.registry,
        )  # fmt: skip
        ProcessCollector(registry=self.registry)
        self._children: dict[tuple[str, str, int], tuple[Histogram, Counter]] = {}

    def observe_request(self, model: str, route: str, code: int, seconds: float) -> None:
        key = (model, route, code)
        children = self._children.get(key)
        if children is None:
            children = (self.request_duration.labels(model, route), self.requests.labels(route, str(code)))
            self._children[key] = children
        children[0].observe(seconds)
        children[1].inc()

    def set_trusted_keys(self, key_ids: list[str]) -> None:
        self.trusted_key.clear()
        for key in key_ids:
            self.trusted_key.labels(key).set(1)

    def set_runtime(self, runtime: str) -> None:
        self.runtime_info.clear()
        self.runtime_info.labels(runtime).set(1)

    def set_model(self, manifest: Manifest) -> None:
        self.model_info.clear()
        self.model_info.labels(manifest.name, str(manifest.version), manifest.onnx.sha256).set(1)

    def observe_window(self, drift: dict[str, DriftScore], prediction: DriftScore | None, counts: WindowCounts) -> None:
        for feature, score in drift.items():
            self.feature_psi.labels(feature).set(score.psi)
            self.feature_p_value.labels(feature).set(1.0 if score.p_adjusted is None else score.p_adjusted)
            self.feature_drifted.labels(feature).set(1 if score.drifted else 0)
        if prediction is not None:
            self.prediction_psi.set(prediction.psi)
        if counts.accuracy is not None:
            self.feedback_accuracy.set(counts.accuracy)

    def refused(self, stream: str, code: int) -> None:
        self.outbox_refused.labels(stream, f"{code:#x}").inc()

    def watch_outbox(self, outbox: Outbox) -> None:
        """Gauges read from the outbox at scrape time."""
        pending = Gauge("edgeloop_outbox_pending_messages", "Messages in the on-disk outbox, not yet delivered.",
                        registry=self.registry)  # fmt: skip
        pending.set_function(outbox.size)
        refused = Gauge("edgeloop_outbox_refused_messages", "Outbox messages whose last publish the broker refused.",
                        registry=self.registry)  # fmt: skip
        refused.set_function(outbox.refused_held)
        unacked = Gauge(
            "edgeloop_outbox_unacknowledged_messages",
            "Outbox messages the broker acknowledged and the cloud has not yet.",
            registry=self.registry,
        )
        unacked.set_function(lambda: outbox.unacknowledged()[0])
        oldest = Gauge(
            "edgeloop_outbox_unacknowledged_oldest_seconds",
            "Age of the oldest message the cloud has not acknowledged (0 when none).",
            registry=self.registry,
        )
        oldest.set_function(lambda: _age(outbox.unacknowledged()[1]))

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _age(since: float | None) -> float:
    return 0.0 if since is None else max(time.time() - since, 0.0)
