"""`GET /metrics` (Prometheus text, open like `/healthz`) and `GET /readyz` (store and broker reachable).

The fleet is read from the store at scrape time (a few GROUP BY counts on indexed or small tables); the ingest's
numbers come from the counters this replica's ingest keeps. Every app gets its own CollectorRegistry, so several
clouds in one process (tests) never share a value.

    edgeloop_cloud_devices{group}                      devices known
    edgeloop_cloud_devices_online{group}               of those, online (status says so, heard from recently)
    edgeloop_cloud_windows_ingested_total              telemetry windows this replica stored (duplicates excluded)
    edgeloop_cloud_messages_received_total             MQTT messages this replica's ingest received
    edgeloop_cloud_duplicates_total                    redelivered messages this replica ignored
    edgeloop_cloud_dead_letters_total                  messages this replica put in dead letters
    edgeloop_cloud_ingest_lag_seconds                  receive-to-commit lag of the last ingest batch
    edgeloop_cloud_ingest_lag_max_seconds              the largest lag since start
    edgeloop_cloud_device_unacknowledged_messages{group}        messages devices hold unacknowledged by the cloud
                                                                (summed; as each device's latest window said)
    edgeloop_cloud_device_unacknowledged_oldest_seconds{group}  age of the oldest of them in the group
    edgeloop_cloud_device_clock_skew_seconds{group}             largest |clock offset| of a device of the group
    edgeloop_cloud_dead_letters                        dead letters in the store (every replica)
    edgeloop_cloud_gaps{state}                         sequence gaps in the store: open or filled
    edgeloop_cloud_rollouts{state}                     rollouts by state (canary, soaking, promoted, ...)
    edgeloop_cloud_alerts_firing{rule}                 alerts firing now, by rule
    edgeloop_cloud_leader                              1 on the replica that runs the controller loops
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import sqlalchemy as sa
from fastapi import APIRouter, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from cloud_sync.api.auth import Auth
from cloud_sync.api.context import CloudContext
from cloud_sync.store.db import alerts, dead_letters, devices, gaps, rollouts
from contracts.problem import problem_response

__all__ = ["FleetCollector", "router"]


class FleetCollector(Collector):
    """Collects the fleet's numbers from the store and the ingest's counters each time it is scraped."""

    def __init__(self, ctx: CloudContext) -> None:
        self.ctx = ctx

    def collect(self) -> Iterator[Metric]:
        yield from self._store_metrics()
        yield from self._ingest_metrics()
        leader = GaugeMetricFamily("edgeloop_cloud_leader", "1 on the replica that runs the controller loops.")
        leader.add_metric([], 1.0 if self.ctx.is_leader() else 0.0)
        yield leader

    def _store_metrics(self) -> Iterator[Metric]:
        now = time.time()
        online = sa.and_(
            sa.or_(devices.c.online.is_(None), devices.c.online.is_(True)),
            devices.c.last_seen >= now - self.ctx.online_timeout_s,
        )
        with self.ctx.store.engine.connect() as conn:
            device_rows = conn.execute(
                sa.select(
                    devices.c.group_name,
                    sa.func.count(),
                    sa.func.sum(sa.case((online, 1), else_=0)),
                    sa.func.sum(devices.c.unacknowledged),
                    sa.func.max(devices.c.unacknowledged_oldest_s),
                    sa.func.max(sa.func.abs(devices.c.clock_offset_s)),
                ).group_by(devices.c.group_name)
            ).all()
            dead = conn.execute(sa.select(sa.func.count()).select_from(dead_letters)).scalar_one()
            gap_total = conn.execute(sa.select(sa.func.count()).select_from(gaps)).scalar_one()
            gap_open = conn.execute(
                sa.select(sa.func.count()).where(gaps.c.last_missing - gaps.c.first_missing + 1 - gaps.c.filled > 0)
            ).scalar_one()
            rollout_rows = conn.execute(sa.select(rollouts.c.state, sa.func.count()).group_by(rollouts.c.state)).all()
            firing_rows = conn.execute(
                sa.select(alerts.c.rule, sa.func.count()).where(alerts.c.state == "firing").group_by(alerts.c.rule)
            ).all()
        known = GaugeMetricFamily("edgeloop_cloud_devices", "Devices known to the cloud, by group.", labels=["group"])
        up = GaugeMetricFamily(
            "edgeloop_cloud_devices_online", "Devices online (status online, heard from recently).", labels=["group"]
        )
        unacked = GaugeMetricFamily(
            "edgeloop_cloud_device_unacknowledged_messages",
            "Messages devices hold that the cloud has not acknowledged (their latest windows), by group.",
            labels=["group"],
        )
        oldest = GaugeMetricFamily(
            "edgeloop_cloud_device_unacknowledged_oldest_seconds",
            "Age of the oldest message a device of the group held unacknowledged (its latest window; 0 when none).",
            labels=["group"],
        )
        skew = GaugeMetricFamily(
            "edgeloop_cloud_device_clock_skew_seconds",
            "Largest |clock offset| of a device of the group, measured from its send times (0 when none measured).",
            labels=["group"],
        )
        for name, total, online_count, held, oldest_s, skew_s in device_rows:
            known.add_metric([name or ""], float(total))
            up.add_metric([name or ""], float(online_count or 0))
            unacked.add_metric([name or ""], float(held or 0))
            oldest.add_metric([name or ""], float(oldest_s or 0.0))
            skew.add_metric([name or ""], float(skew_s or 0.0))
        yield known
        yield up
        yield unacked
        yield oldest
        yield skew
        yield GaugeMetricFamily("edgeloop_cloud_dead_letters", "Dead letters in the store.", value=float(dead))
        by_state = {"open": int(gap_open), "filled": int(gap_total) - int(gap_open)}
        gap_family = GaugeMetricFamily("edgeloop_cloud_gaps", "Sequence gaps in the store, open or filled.",
                                       labels=["state"])  # fmt: skip
        for state in ("open", "filled"):
            gap_family.add_metric([state], float(by_state.get(state, 0)))
        yield gap_family
        rollout_family = GaugeMetricFamily("edgeloop_cloud_rollouts", "Rollouts by state.", labels=["state"])
        for state, total in rollout_rows:
            rollout_family.add_metric([state], float(total))
        yield rollout_family
        firing = GaugeMetricFamily("edgeloop_cloud_alerts_firing", "Alerts firing now, by rule.", labels=["rule"])
        for rule, total in firing_rows:
            firing.add_metric([rule], float(total))
        yield firing

    def _ingest_metrics(self) -> Iterator[Metric]:
        stats = self.ctx.ingest_stats
        if stats is None:
            return
        with stats.lock:
            counters = {
                "windows_ingested": (stats.windows, "Telemetry windows this replica stored (duplicates excluded)."),
                "messages_received": (stats.received, "MQTT messages this replica's ingest received."),
                "duplicates": (stats.duplicates, "Redelivered messages this replica ignored."),
                "dead_letters": (stats.dead, "Messages this replica put in dead letters."),
            }
            lag, max_lag = stats.last_lag_s, stats.max_lag_s
        for name, (value, help_text) in counters.items():
            yield CounterMetricFamily(f"edgeloop_cloud_{name}", help_text, value=float(value))
        yield GaugeMetricFamily(
            "edgeloop_cloud_ingest_lag_seconds", "Receive-to-commit lag of the last ingest batch.", value=lag
        )
        yield GaugeMetricFamily("edgeloop_cloud_ingest_lag_max_seconds", "Largest ingest lag since start.",
                                value=max_lag)  # fmt: skip


def router(ctx: CloudContext, _auth: Auth) -> APIRouter:
    routes = APIRouter(tags=["service"])
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(ctx))

    @routes.get("/metrics", response_class=Response)
    def metrics() -> Response:
        """The fleet in Prometheus' text format (open, like /healthz: scrape it from the monitoring network)."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @routes.get("/readyz", response_model=None)
    def readyz() -> Response | dict[str, object]:
        """200 when the store answers and the broker is connected; 503 (a problem) saying which is not."""
        down = []
        try:
            with ctx.store.engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        except sa.exc.SQLAlchemyError:
            down.append(f"store {ctx.store.safe_url} is unreachable")
        if not ctx.broker_connected():
            down.append("the broker is not connected")
        if down:
            return problem_response(503, "; ".join(down) + ": check the store and broker URLs and that both run")
        return {"status": "ready", "leader": ctx.is_leader()}

    return routes
