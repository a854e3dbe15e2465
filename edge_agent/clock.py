"""The agent's wall clock for what it puts on the wire: window times, event and reported-state times, and the
send time of every outbox message (MQTT 5 user property `sent_at_ms`, docs/mqtt.md).

A Raspberry Pi has no real-time clock: until NTP syncs, its clock may be days off. The cloud measures each
device's offset from the send times and corrects the window times it stores (docs/cloud.md "Honest clocks").
Tests simulate such a device with `EDGELOOP_TEST_CLOCK_OFFSET_S` (seconds added to the real clock, read once at
import): a test hook, not a setting, since a real device's clock is whatever it is.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime

__all__ = ["OFFSET_ENV", "utc_iso", "wall_time"]

OFFSET_ENV = "EDGELOOP_TEST_CLOCK_OFFSET_S"
_OFFSET_S = float(os.environ.get(OFFSET_ENV) or 0.0)


def wall_time() -> float:
    """Unix seconds as this device's clock says (shifted by the test hook when set)."""
    return time.time() + _OFFSET_S


def utc_iso(epoch: float | None = None) -> str:
    """ISO 8601 UTC with milliseconds and a Z, of `epoch` or of `wall_time()`."""
    when = wall_time() if epoch is None else epoch
    return datetime.fromtimestamp(when, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
