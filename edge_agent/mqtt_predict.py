"""Inference over MQTT (opt-in setting `mqtt_predict`): request/response on the broker for a gateway's PLC or
Node-RED flow that speaks MQTT rather than HTTP.

A client publishes a `/v1/predict` body (one record, a list, or `{"records": [...]}`) on
`edgeloop/v1/devices/{device}/predict`, with an MQTT 5 response topic and correlation data; the agent answers
there with the correlation data echoed: the `/v1/predict` answer (contracts/predictions.py), or an RFC 9457
problem (contracts/problem.py, content type `application/problem+json`) when the request fails: never silence.
A request without a response topic (MQTT 3.1.1) is answered on `.../predict/response`.

Same path as REST: `parse_records` (edge_agent/api.py), `InferenceService.predict` (schema check, telemetry,
drift, A/B split with the user property `X-Request-Key`, prediction ids for `/v1/feedback`), hybrid answers, and
errors counted like `/v1/predict`'s. Requests are answered in order by one thread, off paho's network thread (a
desired state or an acknowledgement is never stuck behind predictions); past `mqtt_predict_max_waiting` queued
requests a request is answered at once with a 503 problem. There is no bearer token here: the broker's ACL says
who may publish requests and read answers (deploy/mosquitto/, docs/mqtt.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace

import orjson

from contracts.errors import EdgeloopError, InputError
from contracts.logs import log_event
from contracts.problem import PROBLEM_MEDIA_TYPE, Problem, problem_for
from edge_agent.api import parse_records
from edge_agent.errors import ModelNotReady, PredictQueueFull
from edge_agent.metrics import AgentMetrics
from edge_agent.mqtt import PredictRequest
from edge_agent.protocol_support import count_prediction_error, prediction_body
from edge_agent.service import InferenceService

__all__ = ["MqttPredictor", "PredictLimits"]

logger = logging.getLogger("edgeloop.agent.mqtt_predict")
Publish = Callable[[PredictRequest, bytes, str], None]
_JSON = "application/json"


@dataclass(frozen=True)
class PredictLimits:
    max_batch: int
    """Most records in one request (the agent's max_batch, as /v1/predict)."""
    max_waiting: int
    """Requests queued at most (mqtt_predict_max_waiting)."""
    default_topic: str
    """Where a request whose response topic cannot be published to (a wildcard) gets its problem answer."""


class MqttPredictor:
    """Answers `PredictRequest`s (from `MqttSync.on_predict`) through `publish` (`MqttSync.publish_answer`)."""

    def __init__(
        self, service: InferenceService, metrics: AgentMetrics, publish: Publish, limits: PredictLimits
    ) -> None:
        self.service, self.metrics, self.publish = service, metrics, publish
        self.max_batch, self.default_topic = limits.max_batch, limits.default_topic
        self._queue: queue.Queue[PredictRequest | None] = queue.Queue(limits.max_waiting)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # hybrid answers only (an async client)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="mqtt-predict", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 3.0) -> None:
        """Answer what is queued, then stop (requests arriving later are not answered: the agent is stopping)."""
        if self._thread is None:
            return
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout)
        self._thread.join(timeout)
        self._thread = None
        if self._loop is not None:
            self._loop.close()
            self._loop = None

    def submit(self, request: PredictRequest) -> None:
        """Called on paho's network thread: queue the request, or answer 503 at once when too many wait."""
        try:
            self._queue.put_nowait(request)
        except queue.Full:
            waiting = self._queue.maxsize
            self._fail(request, PredictQueueFull(
                f"{waiting} MQTT predict requests are already waiting: send fewer at once, batch records in one "
                "request, or raise mqtt_predict_max_waiting"))  # fmt: skip

    def _run(self) -> None:
        while (request := self._queue.get()) is not None:
            self.answer(request)

    def answer(self, request: PredictRequest) -> None:
        """Predict one request and publish its answer (or its problem)."""
        try:
            body = self._predict(request)
        except Exception as exc:  # every failure is answered, never silence
            self._fail(request, exc)
            return
        self.publish(request, orjson.dumps(body), _JSON)

    def _predict(self, request: PredictRequest) -> dict[str, object]:
        if _has_wildcard(request.response_topic):
            raise InputError(f"response topic {request.response_topic!r} has a wildcard: name one topic")
        current = self.service.current
        if current is None:
            raise ModelNotReady("no model is loaded yet: install one with --bundle or publish a desired state")
        records, batch = parse_records(request.payload, current.feature_names, self.max_batch)
        result = self.service.predict(records, request.request_key)
        if self.service.hybrid is not None:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
            result = self._loop.run_until_complete(self.service.resolve_hybrid(result, records))
        return prediction_body(result, batch)

    def _fail(self, request: PredictRequest, exc: Exception) -> None:
        count_prediction_error(self.metrics, self.service, exc)
        if isinstance(exc, EdgeloopError):
            problem = problem_for(exc)
        else:
            log_event(logger, "mqtt predict failed", level=logging.ERROR, error=repr(exc))
            problem = Problem(title="Internal Server Error", status=500, detail=f"{type(exc).__name__}: {exc}")
        if _has_wildcard(request.response_topic):  # cannot be published to: answer where MQTT 3.1.1 clients read
            request = replace(request, response_topic=self.default_topic)
        self.publish(request, orjson.dumps(problem.model_dump()), PROBLEM_MEDIA_TYPE)


def _has_wildcard(topic: str) -> bool:
    return "+" in topic or "#" in topic
