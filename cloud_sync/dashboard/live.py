"""Live updates for the dashboard: a watcher thread notices what the ingest (and the rollout controller and
alert evaluator) stored, and server-sent events carry it to every open page.

The watcher runs only while a page is connected (and 5 s after, for pages reconnecting). Every `interval_s`
it reads the ingest's in-memory counters (`IngestStats.batches`, bumped right after each committed batch)
and, when they moved, finds the new telemetry windows, events and device states by id / time; alerts and
rollouts are checked with one small query each. Each change becomes a message `{"id", "type", "devices", "at"}`
with type `windows`, `events`, `devices`, `alerts` or `rollouts`; the last 200 are kept so a reconnecting page
(`Last-Event-ID`) misses nothing.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import sqlalchemy as sa

from cloud_sync.ingest.subscriber import IngestStats
from cloud_sync.store.audit import iso
from cloud_sync.store.db import Store, alerts, devices, events, rollouts, windows

__all__ = ["LiveHub", "sse_stream"]

logger = logging.getLogger("edgeloop.cloud.dashboard")


class LiveHub:
    def __init__(self, store: Store, stats: IngestStats | None = None, interval_s: float = 0.3) -> None:
        self.store, self.stats, self.interval_s = store, stats, interval_s
        self._lock = threading.Lock()
        self._messages: deque[dict[str, Any]] = deque(maxlen=200)
        self._seq = 0
        self._subscribers = 0
        self._thread: threading.Thread | None = None
        self._marks: dict[str, Any] = {}

    # -- subscribers ----------------------------------------------------------------------------------
    def subscribe(self) -> int:
        """Register a page; returns the id of the latest message (the page starts after it)."""
        with self._lock:
            self._subscribers += 1
            if self._thread is None or not self._thread.is_alive():
                self._marks = self._read_marks()
                self._thread = threading.Thread(target=self._run, name="edgeloop-dashboard-live", daemon=True)
                self._thread.start()
            return self._seq

    def unsubscribe(self) -> None:
        with self._lock:
            self._subscribers -= 1

    def since(self, seq: int) -> list[dict[str, Any]]:
        with self._lock:
            return [message for message in self._messages if message["id"] > seq]

    # -- watcher ------------------------------------------------------------------------------------
    def _run(self) -> None:
        idle_since: float | None = None
        while True:
            with self._lock:
                if self._subscribers > 0:
                    idle_since = None
                elif idle_since is None:
                    idle_since = time.monotonic()
                elif time.monotonic() - idle_since > 5.0:  # a grace period for pages reconnecting
                    self._thread = None
                    return
            try:
                self.poll()
            except Exception as exc:  # a locked or restarting store: try again on the next tick
                logger.debug("dashboard watcher: %s", exc)
            time.sleep(self.interval_s)

    def _batches(self) -> int | None:
        if self.stats is None:
            return None
        with self.stats.lock:
            return self.stats.batches

    def _read_marks(self) -> dict[str, Any]:
        with self.store.engine.connect() as conn:
            return {
                "batches": self._batches(),
                "window_id": conn.execute(sa.select(sa.func.max(windows.c.id))).scalar() or 0,
                "event_id": conn.execute(sa.select(sa.func.max(events.c.id))).scalar() or 0,
                "last_seen": conn.execute(sa.select(sa.func.max(devices.c.last_seen))).scalar() or 0.0,
                "alerts": self._alert_mark(conn),
                "rollouts": self._rollout_mark(conn),
            }

    @staticmethod
    def _alert_mark(conn: Any) -> tuple[Any, ...]:
        row = conn.execute(
            sa.select(
                sa.func.count(),
                sa.func.max(alerts.c.id),
                sa.func.max(alerts.c.resolved_at),
                sa.func.max(alerts.c.acknowledged_at),
            )
        ).one()
        return tuple(row)

    @staticmethod
    def _rollout_mark(conn: Any) -> tuple[Any, ...]:
        rows = conn.execute(
            sa.select(rollouts.c.id, rollouts.c.state, rollouts.c.soak_started_at)
            .order_by(rollouts.c.created_at.desc())
            .limit(20)
        ).all()
        return tuple(tuple(row) for row in rows)

    def poll(self) -> None:
        """One check for changes (the watcher thread calls this; tests may too)."""
        marks = self._marks
        batches = self._batches()
        found: list[tuple[str, list[str]]] = []
        with self.store.engine.connect() as conn:
            if batches is None or batches != marks.get("batches"):
                marks["batches"] = batches
                for kind, table, key in (("windows", windows, "window_id"), ("events", events, "event_id")):
                    rows = conn.execute(
                        sa.select(table.c.id, table.c.device_id).where(table.c.id > marks[key]).order_by(table.c.id)
                    ).all()
                    if rows:
                        marks[key] = rows[-1].id
                        found.append((kind, sorted({row.device_id for row in rows})))
                rows = conn.execute(
                    sa.select(devices.c.device_id, devices.c.last_seen).where(devices.c.last_seen > marks["last_seen"])
                ).all()
                if rows:
                    marks["last_seen"] = max(row.last_seen for row in rows)
                    found.append(("devices", sorted(row.device_id for row in rows)))
            for kind, read in (("alerts", self._alert_mark), ("rollouts", self._rollout_mark)):
                mark = read(conn)
                if mark != marks.get(kind):
                    marks[kind] = mark
                    found.append((kind, []))
        if found:
            with self._lock:
                for kind, names in found:
                    self._seq += 1
                    self._messages.append({"id": self._seq, "type": kind, "devices": names, "at": iso(time.time())})


async def sse_stream(
    hub: LiveHub,
    is_disconnected: Callable[[], Any],
    last_event_id: int | None = None,
    max_seconds: float = 25.0,
    keepalive_s: float = 10.0,
) -> AsyncIterator[bytes]:
    """Server-sent events for one page. The stream ends after `max_seconds` (the browser reconnects at once
    with Last-Event-ID), so a server shutting down never waits long for an open dashboard."""
    latest = hub.subscribe()
    seq = latest if last_event_id is None or last_event_id > latest else last_event_id
    try:
        yield b"retry: 500\n: connected\n\n"
        started = last_sent = time.monotonic()
        while time.monotonic() - started < max_seconds:
            if await is_disconnected():
                return
            for message in hub.since(seq):
                seq = message["id"]
                yield b"id: %d\nevent: change\ndata: %s\n\n" % (seq, orjson.dumps(message))
                last_sent = time.monotonic()
            if time.monotonic() - last_sent > keepalive_s:
                yield b": keepalive\n\n"
                last_sent = time.monotonic()
            await asyncio.sleep(0.2)
    finally:
        hub.unsubscribe()
