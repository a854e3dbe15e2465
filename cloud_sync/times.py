"""Time parsing for the cloud, written once: durations (`90s`, `10m`, `1h`, `2d`), ISO 8601 stamps, and the
`since` / `until` period that the API's queries take. `iso` (epoch -> ISO) is the store's, in `store/audit.py`.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

from contracts.errors import InputError

__all__ = ["clock_offset_text", "duration", "epoch", "parse_duration", "period"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*")


def parse_duration(value: str | float | int) -> float:
    """`90`, `90s`, `10m`, `1h`, `2d` -> seconds; ValueError for anything else."""
    if isinstance(value, int | float):
        return float(value)
    match = _DURATION.fullmatch(value)
    if not match:
        raise ValueError(f"{value!r} is not a duration like 30s, 10m, 1h or 2d")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def clock_offset_text(offset_s: float) -> str:
    """A device's clock offset (the cloud's minus the device's) for people: `7.0 d slow`, `3.2 h fast`, `12 min
    slow`, `40 s fast`."""
    size = abs(offset_s)
    if size >= 86400:
        span = f"{size / 86400:.1f} d"
    elif size >= 3600:
        span = f"{size / 3600:.1f} h"
    else:
        span = f"{size / 60:.0f} min" if size >= 60 else f"{size:.0f} s"
    return f"{span} {'slow' if offset_s > 0 else 'fast'}"


def epoch(stamp: str) -> float:
    """ISO 8601 (with Z or an offset; naive = UTC) -> epoch seconds; ValueError for anything else."""
    value = datetime.fromisoformat(stamp)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def duration(value: str) -> float:
    """A duration given by a user (query parameter, setting): seconds, or an InputError that says the format."""
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise InputError(str(exc)) from None


def period(since: str, until: str | None) -> tuple[float, float]:
    """(start, end) in epoch seconds: `until` is an ISO time (default now), `since` a duration back from it
    or an ISO time; InputError when either is neither, or the period is empty."""
    end = time.time() if until is None else _when(until)
    try:
        start = end - parse_duration(since)
    except ValueError:
        start = _when(since)
    if start >= end:
        raise InputError(f"the period is empty: since {since} is not before until {until or 'now'}")
    return start, end


def _when(value: str) -> float:
    try:
        return epoch(value)
    except ValueError:
        raise InputError(f"{value!r} is neither a duration (1h) nor an ISO 8601 time") from None
