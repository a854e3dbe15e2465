"""How the agent tells the cloud what it did: reported state (retained) and events with a sequence number.

`Reporter` is the small interface the deployment service talks to. `MqttSync` (edge_agent.mqtt) implements
it over MQTT; `LogReporter` is the null object for an offline device (the events only go to the log).
Event sequence numbers are per device and survive restarts (`EventCounter` persists them), so the cloud
can ingest idempotently and see gaps.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Protocol

from contracts.logs import log_event
from contracts.messages import DeviceEvent, ReportedState
from edge_agent.clock import utc_iso
from edge_agent.store import write_atomic

__all__ = ["EventCounter", "LogReporter", "Reporter", "make_event", "utc_now"]

logger = logging.getLogger("edgeloop.agent.events")


def utc_now() -> str:
    """Now on this device's clock (edge_agent.clock), ISO 8601 UTC."""
    return utc_iso()


class EventCounter:
    """A per-device sequence number stored in one file, written atomically before each use."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            self._value = int(path.read_text().strip() or 0)
        except FileNotFoundError:
            self._value = 0
        except ValueError:
            log_event(logger, "event counter unreadable, restarting above it", level=logging.WARNING, path=str(path))
            self._value = int(path.stat().st_mtime)  # monotonic enough to stay above the lost value

    @property
    def value(self) -> int:
        return self._value

    def next(self) -> int:
        with self._lock:
            value = self._value + 1
            write_atomic(self.path, f"{value}\n".encode())
            self._value = value
            return value


def make_event(device_id: str, seq: int, kind: str, **fields: Any) -> DeviceEvent:
    return DeviceEvent(device_id=device_id, seq=seq, kind=kind, at=utc_now(), **fields)  # type: ignore[arg-type]


class Reporter(Protocol):
    def publish_event(self, kind: str, **fields: Any) -> DeviceEvent:
        """Publish a DeviceEvent (kind: deployed, rejected, rolled_back, error, started)."""
        ...

    def publish_reported(self, state: ReportedState) -> None:
        """Publish the device's reported state (retained)."""
        ...


class LogReporter:
    """Reporter of a device with no broker: events and state changes are logged, numbered all the same."""

    def __init__(self, device_id: str, counter: EventCounter) -> None:
        self.device_id = device_id
        self.counter = counter

    def publish_event(self, kind: str, **fields: Any) -> DeviceEvent:
        event = make_event(self.device_id, self.counter.next(), kind, **fields)
        level = logging.WARNING if kind in ("rejected", "error") else logging.INFO
        log_event(logger, f"model {kind}", level=level, seq=event.seq, model=event.model_name,
                  version=event.model_version, reason=event.reason)  # fmt: skip
        return event

    def publish_reported(self, state: ReportedState) -> None:
        log_event(logger, "reported state", level=logging.DEBUG, state=state.state, model=state.model_name,
                  version=state.model_version)  # fmt: skip
