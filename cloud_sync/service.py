"""`edgeloop cloud`: one process with the API and bundle server (uvicorn), the ingest, the rollout
controller and the alert evaluator (threads), all on one store. Several replicas may share a PostgreSQL
store: each serves the API and ingests, and only the leader (cloud_sync/leader.py) runs the loops.

    service = CloudService(CloudSettings(port=8700, mqtt_url="mqtt://127.0.0.1:1883"))
    service.run()          # until SIGTERM / SIGINT
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI

from cloud_sync.alerts.evaluator import AlertEvaluator
from cloud_sync.alerts.rules import load_rules
from cloud_sync.api.app import create_app
from cloud_sync.api.context import CloudContext
from cloud_sync.ingest.publisher import MqttPublisher
from cloud_sync.ingest.subscriber import Ingest
from cloud_sync.leader import LoopStop, leadership_for
from cloud_sync.loop.impact import load_value_matrices
from cloud_sync.rollouts.checks import Limits
from cloud_sync.rollouts.controller import Rollouts
from cloud_sync.rollouts.fleet_aliases import connect_registry
from cloud_sync.rollouts.sequential import SequentialRule
from cloud_sync.settings import CloudSettings
from cloud_sync.signing_keys import KeyRotation
from cloud_sync.store.bundles import BundleRegistry
from cloud_sync.store.db import Store
from contracts.drift_stats import DriftRule
from contracts.logs import log_event
from contracts.signing import trusted_keys

__all__ = ["CloudService"]

logger = logging.getLogger("edgeloop.cloud")


class CloudService:
    def __init__(self, settings: CloudSettings) -> None:
        self.settings = s = settings
        self.store = Store(s.store_url, s.store_schema).create()
        if trusted_keys(s.keys_dir) is None:
            log_event(
                logger,
                "no public key: uploaded bundles are checked by sha256 only",
                level=logging.WARNING,
                expected=str(s.keys_dir),
            )
        self.registry = BundleRegistry(s.bundles_dir, keys_dir=s.keys_dir)
        self.rules = load_rules(s.alert_rules)
        self.value_matrices = load_value_matrices(s.value_matrices)
        self.publisher = MqttPublisher(
            s.mqtt_url, f"{s.ingest_client_id}-control", s.mqtt_username, s.mqtt_password, ca_file=s.mqtt_ca_file
        )
        self.ingest = Ingest(
            self.store,
            s.mqtt_url,
            s.ingest_client_id,
            s.ingest_share_group,
            s.ingest_batch,
            s.mqtt_username,
            s.mqtt_password,
            s.mqtt_ca_file,
            ack_interval_s=s.ack_interval_s if s.ack_enabled else None,
            clock_tolerance_s=s.clock_tolerance_s,
        )
        limits = Limits(
            s.rollout_max_error_rate,
            s.rollout_max_p99_s,
            s.rollout_max_psi,
            s.rollout_max_accuracy_drop,
            s.rollout_min_samples,
            DriftRule(alpha=s.drift_alpha, min_expected=s.drift_min_expected, correction=s.drift_correction),
            SequentialRule(s.ab_alpha, s.ab_min_labels, s.ab_mixture_sd, s.ab_auto_decide),
        )
        self.rollouts = Rollouts(
            self.store,
            self.registry,
            self.publisher,
            base_url=s.base_url,
            keys_dir=s.keys_dir,
            limits=limits,
            confirm_timeout_s=s.rollout_confirm_timeout_s,
            aliases=connect_registry(s.registry_tracking_uri, s.registry_champion_group, s.registry_aliases),
        )
        self.keys = KeyRotation(s.keys_dir, self.store, self.registry, self.publisher)
        self.alerts = AlertEvaluator(
            self.store,
            self.registry,
            self.rules,
            self._publish_alert,
            s.webhook_url,
            s.online_timeout_s,
            drift_rule=DriftRule(alpha=s.drift_alpha, min_expected=s.drift_min_expected, correction=s.drift_correction),
            clock_skew_limit_s=s.clock_skew_limit_s,
            baseline_records=s.drift_baseline_records,
        )
        self.retrains = None
        if s.retrain_policies:
            from cloud_sync.loop.retrain_triggers import RetrainTriggers, load_policy_triggers

            token = s.retrain_token or next((t.rpartition(":")[2] for t in s.operator_tokens), None)
            self.retrains = RetrainTriggers(
                self.store,
                load_policy_triggers(s.retrain_policies),
                s.base_url,
                token,
                s.retrain_workdir,
                s.retrain_tracking_uri,
                s.retrain_cooldown_s,
            )
        self.leadership = leadership_for(self.store, s.rollout_tick_s, s.leader_stale_ticks)
        self._stop = threading.Event()
        self._loops_stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._elector: threading.Thread | None = None

    def _prune_feedback_rows(self, stop: threading.Event, interval_s: float) -> None:
        """Bounded retention of the feedback rows devices send (age and count), checked every interval."""
        from cloud_sync.loop.feedback_rows import prune

        s = self.settings
        while True:
            try:
                deleted = prune(self.store, s.feedback_rows_retention_days * 86400, s.feedback_rows_max)
                if deleted:
                    log_event(logger, "feedback rows pruned", rows=deleted)
            except Exception as exc:  # the store may be down for a while; try again later
                log_event(logger, "feedback row pruning failed", level=logging.WARNING, error=str(exc))
            if stop.wait(interval_s):
                return

    def _republish_keys(self) -> None:
        """The last key set again, retained (a broker that lost it gives it back to devices); off the start path,
        since it waits for the broker."""
        try:
            self.keys.republish()
        except Exception as exc:  # the broker may be down at start; the next rotation publishes again
            log_event(logger, "key set not republished", level=logging.WARNING, error=str(exc))

    def _publish_alert(self, topic: str, body: bytes) -> None:
        self.publisher.publish(topic, body, retain=True, timeout=5)

    def start(self) -> None:
        self.publisher.start(wait_s=0)
        threading.Thread(target=self._republish_keys, name="edgeloop-keys", daemon=True).start()
        self.ingest.start()
        s = self.settings
        self._elector = threading.Thread(
            target=self.leadership.run,
            args=(self._stop, self._start_loops, self._stop_loops),
            name="edgeloop-leader",
            daemon=True,
        )
        self._elector.start()
        if not s.viewer_tokens and not s.operator_tokens:
            log_event(logger, "no API token set: anyone who can reach the port may deploy", level=logging.WARNING)
        log_event(
            logger,
            "cloud started",
            url=s.base_url,
            store=self.store.safe_url,
            broker=s.mqtt_url,
            bundles=str(s.bundles_dir),
            rules=len(self.rules),
        )

    def _start_loops(self) -> None:
        """Leadership gained: the controller, alerts, retention and retrain loops start (a fresh stop event)."""
        s = self.settings
        self._loops_stop = LoopStop(self.leadership.confirmed, poll_s=min(0.1, s.rollout_tick_s))
        self._threads = []
        for name, target, args in (
            ("edgeloop-rollouts", self.rollouts.run, (self._loops_stop, s.rollout_tick_s)),
            ("edgeloop-alerts", self.alerts.run, (self._loops_stop, s.alert_tick_s)),
            ("edgeloop-retention", self._prune_feedback_rows, (self._loops_stop, 300.0)),
            *([("edgeloop-retrain", self.retrains.run, (self._loops_stop, s.retrain_tick_s))] if self.retrains else []),
        ):
            thread = threading.Thread(target=target, args=args, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def _stop_loops(self) -> None:
        """Leadership lost or the cloud stops: the loops end their current tick and return."""
        self._loops_stop.set()
        for thread in self._threads:
            thread.join(30)
        self._threads = []

    def stop(self) -> None:
        self._stop.set()
        if self._elector is not None:
            self._elector.join(40)
        self.ingest.stop()
        self.publisher.stop()
        self.rollouts.aliases.close()
        self.store.dispose()
        log_event(logger, "cloud stopped")

    def create_app(self) -> FastAPI:
        @contextlib.asynccontextmanager
        async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
            self.start()
            try:
                yield
            finally:
                self.stop()

        s = self.settings
        context = CloudContext(
            self.store,
            self.registry,
            self.rollouts,
            s.viewer_tokens,
            s.operator_tokens,
            s.online_timeout_s,
            self.ingest.stats,
            s.score_bundles,
            self.value_matrices,
            s.max_body_bytes,
            is_leader=self.leadership.is_leader,
            broker_connected=lambda: self.ingest.connected.is_set() and self.publisher.connected.is_set(),
            keys=self.keys,
        )
        return create_app(context, lifespan)

    def run(self) -> None:
        import uvicorn

        config: Any = uvicorn.Config(
            self.create_app(),
            host=self.settings.host,
            port=self.settings.port,
            access_log=False,
            log_config=None,
            log_level="warning",
        )
        log_event(logger, "listening", url=f"http://{self.settings.host}:{self.settings.port}", docs="/docs")
        uvicorn.Server(config).run()
