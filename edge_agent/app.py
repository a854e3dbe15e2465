"""Wiring: one `Agent` (store, inference service, deployment service, MQTT) and the process that serves it.

agent = Agent(AgentSettings(bundle=Path("bundles/machine-failure")))
agent.load()                     # disk only: the current model, then --bundle
app = agent.create_app()         # FastAPI; its lifespan starts and stops MQTT and the update worker
run_agent(settings)              # all of the above plus uvicorn, until SIGTERM / SIGINT
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import logging
import os
import signal
import threading
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI

from contracts.drift_stats import DriftRule
from contracts.errors import EdgeloopError, InputError, IntegrityError
from contracts.keyset import KEYS_TOPIC, KeySetMessage
from contracts.logs import log_event
from contracts.signing import load_public_key
from contracts.topics import predict_response_topic
from edge_agent.ab_split import KeyFields
from edge_agent.api import create_app
from edge_agent.feedback import FeedbackStore
from edge_agent.memory import fix_mmap_threshold
from edge_agent.metrics import AgentMetrics
from edge_agent.mqtt import MqttSync
from edge_agent.mqtt_predict import MqttPredictor, PredictLimits
from edge_agent.outbox import Outbox
from edge_agent.reporting import EventCounter, LogReporter, Reporter
from edge_agent.service import InferenceService
from edge_agent.settings import AgentSettings
from edge_agent.store import ModelStore
from edge_agent.telemetry import TelemetryReporter
from edge_agent.trust import TrustedKeys
from edge_agent.updater import AGENT_VERSION, Updater, UpdateWorker

__all__ = ["Agent", "run_agent"]

logger = logging.getLogger("edgeloop.agent")


class Agent:
    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.key_path = settings.resolved_public_key()
        public_key = load_public_key(self.key_path) if self.key_path else None
        self.trust = TrustedKeys(settings.state_dir, public_key) if public_key is not None else None
        from contracts.runtime import resolve_runtime

        self.runtime = resolve_runtime(settings.runtime)  # one-line InputError when onnxruntime is asked for but absent
        self.metrics = AgentMetrics()
        self.metrics.set_runtime(self.runtime)
        self.store = ModelStore(settings.state_dir, self.trust, settings.keep_versions)
        self._lock_file = self._lock_state_dir()
        self.counter = EventCounter(self.store.state_dir / "events.seq")
        # With a broker configured, telemetry windows and events go through the on-disk outbox first.
        self.outbox = (
            Outbox(self.store.state_dir / "outbox.db", settings.outbox_max_messages) if settings.mqtt_url else None
        )
        self.sync = MqttSync(settings, self.counter, self.outbox) if settings.mqtt_url else None
        self.telemetry: TelemetryReporter | None = None
        if self.outbox is not None and self.sync is not None and self.sync.publisher is not None:
            self.metrics.watch_outbox(self.outbox)
            self.sync.publisher.on_refused = self.metrics.refused
        if self.outbox is not None and self.sync is not None:
            self.telemetry = TelemetryReporter(
                self.outbox,
                settings.device_id,
                settings.group,
                AGENT_VERSION,
                self.store.state_dir,
                settings.telemetry_interval_s,
                settings.psi_moderate,
                settings.psi_significant,
                on_append=self.sync.publisher.wake if self.sync.publisher else None,
                drift_rule=DriftRule(
                    alpha=settings.drift_alpha,
                    min_psi=settings.psi_significant,
                    min_expected=settings.drift_min_expected,
                    correction=settings.drift_correction,
                ),
            )
            self.telemetry.on_window = self.metrics.observe_window
        feedback, key_fields = FeedbackStore(settings.feedback_capacity), KeyFields(settings.request_key_fields)
        self.service = InferenceService(self.metrics, self.telemetry, feedback, key_fields)
        if settings.hybrid_threshold is not None:
            if not settings.hybrid_url:
                raise InputError("hybrid_threshold is set but hybrid_url is not: give the cloud's URL")
            from edge_agent.hybrid import HybridClient

            self.service.hybrid = HybridClient(
                settings.hybrid_url, settings.hybrid_token, settings.hybrid_threshold, settings.hybrid_deadline_s
            )
        if settings.feedback_rows:
            if self.outbox is None:
                raise InputError("feedback_rows is on but mqtt_url is not set: rows go to the cloud over MQTT")
            from edge_agent.feedback_rows import FeedbackRowSink, RowPolicy

            self.service.row_policy = RowPolicy(settings.feedback_rows_sample_rate, settings.feedback_rows_fields)
            self.service.row_sink = FeedbackRowSink(
                self.outbox,
                settings.device_id,
                settings.group,
                settings.feedback_rows_max_per_hour,
                on_append=self.sync.publisher.wake if self.sync and self.sync.publisher else None,
            )
        reporter: Reporter = self.sync or LogReporter(settings.device_id, self.counter)
        self.updater = Updater(settings, self.store, self.service, reporter, self.trust, self.metrics)
        self.worker = UpdateWorker(self.updater)
        if self.sync is not None:
            self.sync.on_desired = self.worker.submit
            self.sync.reported_provider = self.updater.reported_state
            if self.trust is not None:
                self.sync.on_key_set = self.apply_key_set
        if self.trust is not None:
            self.metrics.set_trusted_keys(self.trust.ids)
        self.predictor = self._mqtt_predictor() if settings.mqtt_predict else None
        self._started = False

    def _mqtt_predictor(self) -> MqttPredictor:
        """Inference over MQTT (opt-in): requests from the predict topic, answered by the service (mqtt_predict.py)."""
        if self.sync is None:
            raise InputError("mqtt_predict is on but mqtt_url is not set: requests come through the broker")
        limits = PredictLimits(
            self.settings.max_batch, self.settings.mqtt_predict_max_waiting, predict_response_topic(self.sync.device_id)
        )
        predictor = MqttPredictor(self.service, self.metrics, self.sync.publish_answer, limits)
        self.sync.on_predict = predictor.submit
        return predictor

    def _lock_state_dir(self) -> Any:
        handle = open(self.store.state_dir / "agent.lock", "w")  # noqa: SIM115 - held for the agent's life
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise InputError(
                f"another agent is using {self.store.state_dir}; give each agent its own --state-dir"
            ) from None
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        return handle

    def load(self) -> None:
        """Serve the store's current model (no network), then install `settings.bundle` if given."""
        for bundle in self.store.candidates():
            try:
                self.updater.serve_stored(bundle)
            except EdgeloopError as exc:
                log_event(logger, "stored model refused", level=logging.ERROR, bundle=bundle.path.name,
                          error=exc.message)  # fmt: skip
                continue
            if bundle.path.name != self.store.current_name():
                self.store.activate(bundle)
            break
        if self.settings.bundle is not None:
            try:
                self.updater.install_local(self.settings.bundle)
            except EdgeloopError as exc:
                if not self.service.ready:
                    raise
                log_event(logger, "--bundle refused, serving the stored model", level=logging.ERROR,
                          error=exc.message)  # fmt: skip
        if not self.service.ready:
            log_event(logger, "no model yet: /readyz answers 503 until one is installed", level=logging.WARNING)
        if self.settings.shadow_bundle is not None:
            self.load_shadow(self.settings.shadow_bundle)

    def load_shadow(self, path: Any) -> None:
        """Verify a challenger bundle (signature when a public key is set, sha256, golden samples) and run it
        in shadow beside the served model."""
        from contracts.bundle import load_bundle
        from contracts.runtime import OnnxModel

        keys = self.trust.current() if self.trust is not None else None
        bundle = load_bundle(path, keys, require_signature=keys is not None)
        model = OnnxModel.load(bundle, intra_op_threads=self.settings.intra_op_threads, runtime=self.runtime)
        model.check_golden_samples()
        self.service.set_shadow(model, bundle)

    def apply_key_set(self, message: KeySetMessage) -> None:
        """A key set announced on edgeloop/v1/keys: trusted from now on (persisted, reported), or refused (logged
        and reported as a `rejected` event); the served model keeps serving either way."""
        if self.trust is None:
            return
        try:
            changed = self.trust.apply(message)
        except IntegrityError as exc:
            self.trust.refused(exc.message)
            if self.sync is not None:
                self.sync.publish_event("rejected", reason=exc.message, details={"topic": KEYS_TOPIC,
                                        "key_set": message.seq, "signer": message.signer})  # fmt: skip
            return
        if changed:
            self.metrics.set_trusted_keys(self.trust.ids)
            if self.sync is not None:
                self.sync.publish_reported(self.updater.reported_state())

    def start(self) -> None:
        """Start the update worker and the MQTT connection (both in the background)."""
        if self._started:
            return
        self._started = True
        self.worker.start()
        if self.telemetry is not None:
            self.telemetry.start()
        if self.predictor is not None:
            self.predictor.start()
        if self.sync is not None:
            self.sync.start()
        if self.settings.token is None:
            log_event(logger, "no token set: /v1/* is open to anyone who can reach the port", level=logging.WARNING)
        current = self.service.current
        log_event(logger, "agent started", device=self.settings.device_id, group=self.settings.group,
                  model=current.manifest.ref if current else None, mqtt=self.settings.mqtt_url or "offline",
                  public_key=self.key_path or "none (signatures not checked)", version=AGENT_VERSION,
                  runtime=self.runtime, mqtt_predict=self.predictor is not None)  # fmt: skip

    def stop(self) -> None:
        """Close the telemetry window, drain the outbox briefly, publish offline and disconnect, let a running
        update finish, release the state dir."""
        if self.predictor is not None:
            self.predictor.stop()
        if self.telemetry is not None:
            self.telemetry.stop(final_flush=True)
        if self.sync is not None:
            self.sync.stop()
        if self.outbox is not None:
            self.outbox.close()
        self.worker.stop()
        if self.service.hybrid is not None:
            self.service.hybrid.close()
        with contextlib.suppress(OSError):
            self._lock_file.close()
        self._started = False
        log_event(logger, "agent stopped", device=self.settings.device_id)

    def status(self) -> dict[str, Any]:
        return {
            "device_id": self.settings.device_id,
            "group": self.settings.group,
            "mqtt": None if self.sync is None else ("connected" if self.sync.connected.is_set() else "disconnected"),
            "last_error": self.updater.last_error,
            "stored_bundles": [path.name for path in self.store.installed()],
            "trusted_keys": [] if self.trust is None else self.trust.ids,
            "key_set_seq": None if self.trust is None else self.trust.seq,
            "agent_version": AGENT_VERSION,
            "runtime": self.runtime,
            "outbox_pending": None if self.outbox is None else self.outbox.size(),
            "telemetry_dropped_windows": None if self.outbox is None else self.outbox.dropped,
            "outbox_refused": None if self.outbox is None else self.outbox.refused_held(),
            "outbox_refused_total": None if self.outbox is None else self.outbox.refused_total,
            "cloud_ack": None if self.sync is None or self.sync.acks is None else self.sync.acks.summary(),
            "shadow": None if self.service.shadow is None else self.service.shadow.manifest.ref,
            "ab": None
            if self.service.ab is None
            else {
                "model": self.service.ab.model.manifest.ref,
                "fraction": self.service.ab.fraction,
                "key_field": self.service.ab.key_field,
            },
            "hybrid_threshold": self.settings.hybrid_threshold,
            "feedback_rows": None
            if self.service.row_sink is None
            else {"sent": self.service.row_sink.sent, "dropped": self.service.row_sink.dropped},
        }

    def create_app(self) -> FastAPI:
        @contextlib.asynccontextmanager
        async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
            self.start()
            # Everything built so far (modules, app, model) lives as long as the process: keep it out of the
            # garbage collector's full passes, which otherwise pause requests for milliseconds (p99 / 3 in
            # bench_agent_rest.py at concurrency 1).
            gc.collect()
            gc.freeze()
            try:
                yield
            finally:
                self.stop()

        return create_app(
            self.service, self.settings, self.metrics, self.status, lifespan, install_bundle=self.updater.install_local
        )


def run_agent(settings: AgentSettings) -> None:
    """Load, then serve with uvicorn (one worker, httptools; uvloop when installed) until SIGTERM or SIGINT."""
    import uvicorn

    fix_mmap_threshold()  # before the prediction-id cache grows: its tables stay out of the heap
    agent = Agent(settings)
    agent.load()
    config = uvicorn.Config(
        agent.create_app(),
        host=settings.host,
        port=settings.port,
        workers=1,
        access_log=False,
        log_config=None,
        log_level="warning",
        server_header=False,
        ws="none",  # no WebSocket route: not importing a WebSocket library saves start time and memory
        timeout_graceful_shutdown=10,
    )
    log_event(logger, "listening", url=f"http://{settings.host}:{settings.port}", docs="/docs")
    # uvicorn shuts down gracefully on SIGTERM, then re-raises it: make that a clean exit (status 0) for
    # systemd and Docker instead of "killed by signal".
    signal.signal(signal.SIGTERM, _exit_cleanly)
    if agent.telemetry is not None:  # SIGUSR1: publish the telemetry window now (`kill -USR1`), off the signal frame
        flush = agent.telemetry.flush
        signal.signal(signal.SIGUSR1, lambda _signum, _frame: threading.Thread(target=flush, daemon=True).start())
    uvicorn.Server(config).run()


def _exit_cleanly(_signum: int, _frame: object) -> None:
    raise SystemExit(0)
