"""Honest clocks: a device's clock offset, measured from the send time it stamps on each outbox message.

A Raspberry Pi has no real-time clock; until NTP syncs its clock may be days off, and its window times with it.
The agent stamps every publish from its outbox with the MQTT 5 user property `sent_at_ms` (its own clock);
the cloud's receive time minus that is the device's offset plus the delivery delay (network, broker queue).
The delay only ever adds, so per device and batch the smallest difference is the estimate (NTP's minimum-delay
filter). Offsets under `clock_tolerance_s` are taken as delivery delay and not applied; larger ones shift the
window times the cloud stores (rates, periods and alerts use those), and beyond `clock_skew_limit_s` the device
is flagged and the `clock_skew_above` alert rule fires (docs/cloud.md "Honest clocks").
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["SENT_AT_PROPERTY", "ClockReading", "correction", "measure", "sent_at"]

SENT_AT_PROPERTY = "sent_at_ms"


@dataclass(frozen=True)
class ClockReading:
    """One device's offset as one batch measured it: add `offset_s` to its times to get the cloud's."""

    offset_s: float
    measured_at: float
    """The cloud's receive time of the message the estimate comes from."""


def sent_at(message: Any) -> float | None:
    """The `sent_at_ms` user property of a paho message in Unix seconds; None when absent, malformed, or on a
    retained message (delivered long after it was sent)."""
    properties = getattr(message, "properties", None)
    if getattr(message, "retain", False) or properties is None:
        return None
    for name, value in getattr(properties, "UserProperty", None) or ():
        if name == SENT_AT_PROPERTY:
            try:
                return int(value) / 1000.0
            except ValueError:
                return None
    return None


def measure(samples: Iterable[tuple[str, float, float | None]]) -> dict[str, ClockReading]:
    """(device, received_at, sent_at) -> per device the reading with the smallest receive-minus-send."""
    readings: dict[str, ClockReading] = {}
    for device, received, sent in samples:
        if sent is None:
            continue
        offset = received - sent
        known = readings.get(device)
        if known is None or offset < known.offset_s:
            readings[device] = ClockReading(round(offset, 3), received)
    return readings


def correction(reading: ClockReading | None, tolerance_s: float) -> float:
    """Seconds to add to a device's times: its offset, or 0 within the tolerance (or when not measured)."""
    if reading is None or abs(reading.offset_s) < tolerance_s:
        return 0.0
    return reading.offset_s
