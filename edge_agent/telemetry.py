"""Telemetry windows: every `interval` seconds the current window's counts become a TelemetryWindow with
drift scores and resource use, appended to the outbox (which the publisher drains to the broker).

A model switch closes the window early, so every window's bins belong to one model version.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import psutil

from contracts.drift_stats import DriftRule
from contracts.logs import log_event
from contracts.manifest import Manifest
from contracts.telemetry import DriftScore, Resources, TelemetryWindow, WindowCounter, WindowCounts, score_drift
from contracts.topics import device_topic
from edge_agent.clock import utc_iso
from edge_agent.outbox import Outbox

__all__ = ["TelemetryReporter", "read_resources"]

logger = logging.getLogger("edgeloop.agent.telemetry")
_THERMAL = Path("/sys/class/thermal/thermal_zone0/temp")
_RETIRED_WINDOWS = 10


def read_resources(state_dir: Path, process: psutil.Process) -> Resources:
    """CPU % since the last call, RSS, free disk of the state directory, and the SoC temperature on a Pi."""
    temperature = None
    with contextlib.suppress(OSError, ValueError):  # no thermal zone (not a Pi): the field stays empty
        temperature = int(_THERMAL.read_text().strip()) / 1000.0
    try:
        free = psutil.disk_usage(str(state_dir)).free
    except OSError:
        free = None
    return Resources(
        cpu_percent=process.cpu_percent(interval=None),
        rss_bytes=process.memory_info().rss,
        disk_free_bytes=free,
        soc_temperature_c=temperature,
    )


class TelemetryReporter:
    def __init__(
        self,
        outbox: Outbox,
        device_id: str,
        group: str,
        agent_version: str,
        state_dir: Path,
        interval: float = 60.0,
        psi_moderate: float = 0.1,
        psi_significant: float = 0.25,
        on_append: Callable[[], None] | None = None,
        drift_rule: DriftRule | None = None,
    ) -> None:
        self.outbox = outbox
        self.device_id = device_id
        self.group = group
        self.agent_version = agent_version
        self.state_dir = state_dir
        self.interval = interval
        self.psi_moderate = psi_moderate
        self.psi_significant = psi_significant
        self.drift_rule = drift_rule or DriftRule(min_psi=psi_significant)
        self.on_append = on_append
        self._lock = threading.Lock()
        self._counter: WindowCounter | None = None
        self._sha256: str | None = None
        self._retired: list[list[Any]] = []
        self._shadow_version: int | None = None
        self._ab_version: int | None = None
        self.on_window: Callable[[dict[str, DriftScore], DriftScore | None, WindowCounts], None] | None = None
        """Called after each window (the agent sets its drift and accuracy gauges from it)."""
        self._window_start = utc_iso()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._process = psutil.Process(os.getpid())
        self._process.cpu_percent(interval=None)

    @property
    def counter(self) -> WindowCounter | None:
        """The counter of the current window (None before a model is loaded); read it once per request."""
        return self._counter

    def set_model(self, manifest: Manifest, sha256: str) -> WindowCounter:
        """Close the current window (if any) and count the new model's traffic in a fresh one.

        The previous counter is kept for a few windows: requests that were in flight during the switch and
        late feedback on its predictions still land in windows of the version that made them.
        """
        with self._lock:
            if self._counter is not None:
                self._flush_locked()
                self._retired.append([self._counter, self._sha256, _RETIRED_WINDOWS])
            self._counter = WindowCounter(manifest)
            self._sha256 = sha256
            return self._counter

    def set_shadow(self, version: int | None) -> None:
        """Close the current window and mark the next ones with the shadow challenger's version."""
        with self._lock:
            if self._counter is not None and version != self._shadow_version:
                self._flush_locked()
            self._shadow_version = version

    def set_ab(self, version: int | None) -> None:
        """Close the current window and mark the next ones with the A/B challenger's version (kept after the
        split stops, for late feedback on the challenger's answers)."""
        with self._lock:
            if self._counter is not None and version != self._ab_version:
                self._flush_locked()
            if version is not None:
                self._ab_version = version

    def flush(self) -> int | None:
        """Close the current window now; returns its sequence number."""
        with self._lock:
            return self._flush_locked()

    def _flush_locked(self) -> int | None:
        start, end = self._window_start, utc_iso()
        self._window_start = end
        for entry in list(self._retired):
            counter, sha256, left = entry
            counts = counter.snapshot()
            if counts.requests or counts.errors or counts.feedback_count:
                self._emit(counter.manifest, sha256, counts, start, end)
            entry[2] = left - 1
            if entry[2] <= 0:
                self._retired.remove(entry)
        if self._counter is None:
            return None
        return self._emit(self._counter.manifest, self._sha256, self._counter.snapshot(), start, end)

    def _emit(self, manifest: Manifest, sha256: str | None, counts: WindowCounts, start: str, end: str) -> int:
        drift, prediction = score_drift(counts, manifest, self.psi_moderate, self.psi_significant, rule=self.drift_rule)
        base = counts.model_dump()
        resources = read_resources(self.state_dir, self._process)
        dropped = self.outbox.dropped
        floor = self.outbox.floor("telemetry")  # read before the append: it can only rise meanwhile (safe)
        unacked, oldest = self.outbox.unacknowledged()
        oldest_s = None if oldest is None else round(max(time.time() - oldest, 0.0), 3)
        shadow_version = self._shadow_version if counts.shadow_agreement or counts.shadow_confusion else None
        ab_version = self._ab_version if counts.arms else None

        def build(seq: int) -> bytes:
            window = TelemetryWindow(
                **base,
                device_id=self.device_id,
                group=self.group,
                seq=seq,
                epoch=self.outbox.epoch,
                window_start=start,
                window_end=end,
                agent_version=self.agent_version,
                model_name=manifest.name,
                model_version=manifest.version,
                bundle_sha256=sha256,
                drift=drift,
                prediction_drift=prediction,
                accuracy_value=counts.accuracy,
                feedback_total=counts.feedback_count,
                resources=resources,
                dropped_windows=dropped,
                outbox_floor=seq if floor is None else floor,
                unacknowledged=unacked,
                unacknowledged_oldest_s=oldest_s,
                shadow_model_version=shadow_version,
                ab_model_version=ab_version,
            )
            return orjson.dumps(window.model_dump(mode="json"))

        seq = self.outbox.append("telemetry", device_topic(self.device_id, "telemetry"), build)
        worst = max(drift.items(), key=lambda item: item[1].psi, default=None)
        log_event(
            logger,
            "telemetry window",
            seq=seq,
            model=f"{manifest.name}/{manifest.version}",
            requests=counts.requests,
            records=counts.records,
            worst_feature=worst[0] if worst else None,
            worst_psi=round(worst[1].psi, 3) if worst else None,
            drifted=sorted(name for name, score in drift.items() if score.drifted) or None,
            accuracy=None if counts.accuracy is None else round(counts.accuracy, 4),
            outbox=self.outbox.size(),
        )
        if self.on_window is not None:
            self.on_window(drift, prediction, counts)
        if self.on_append:
            self.on_append()
        return seq

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="telemetry", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.flush()
            except Exception as exc:  # a full disk must not stop serving; the next window tries again
                log_event(logger, "telemetry window failed", level=logging.WARNING, error=str(exc))

    def stop(self, final_flush: bool = True) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(5)
        if final_flush:
            try:
                self.flush()
            except Exception as exc:
                log_event(logger, "final telemetry window failed", level=logging.WARNING, error=str(exc))
