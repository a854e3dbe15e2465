"""Turning device messages into rows: parse and validate (anything wrong goes to `dead_letters` with the
reason), then write a whole batch in one transaction.

Window times are stored on the cloud's clock: shifted by the device's measured clock offset when it is
beyond the tolerance (`clocks.py`), which the device row keeps (`clock_offset_s`). Idempotent on
(device_id, epoch, seq) per stream: a redelivered window or event inserts nothing and changes
nothing. A jump in a device's sequence is recorded in `gaps` (first and last missing number); a late
message that falls inside a recorded gap counts as `filled`, so several ingest workers splitting one
device's messages never leave a false gap behind. Device accepted/rejected/rolled back events also go to
the audit log, once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
import sqlalchemy as sa
from pydantic import BaseModel, ValidationError
from sqlalchemy.engine import Connection

from cloud_sync.ingest.clocks import ClockReading, correction, measure
from cloud_sync.ingest.watermarks import STREAMS, advance
from cloud_sync.store import audit
from cloud_sync.store.db import Store, dead_letters, devices, events, feedback_rows, gaps, windows
from cloud_sync.times import epoch
from contracts.messages import DeviceEvent, DeviceStatus, FeedbackRows, ReportedState
from contracts.telemetry import TelemetryWindow
from contracts.topics import parse_device_topic

__all__ = ["BatchResult", "Incoming", "IngestWriter", "Parsed", "parse_message"]

_MODELS: dict[str, type[BaseModel]] = {
    "telemetry": TelemetryWindow,
    "events": DeviceEvent,
    "reported": ReportedState,
    "status": DeviceStatus,
    "feedback": FeedbackRows,
}
_AUDITED_EVENTS = {"deployed": "device accepted", "rejected": "device rejected", "rolled_back": "device rolled back"}
_MAX_DEAD_PAYLOAD = 64 * 1024


@dataclass(frozen=True)
class Incoming:
    topic: str
    payload: bytes
    received_at: float
    mid: int = 0
    qos: int = 0
    sent_at: float | None = None
    """The device's send time (MQTT 5 user property `sent_at_ms`, its own clock), when it stamped one."""


@dataclass(frozen=True)
class Parsed:
    device_id: str
    kind: str
    message: Any
    incoming: Incoming


@dataclass
class BatchResult:
    windows: int = 0
    events: int = 0
    duplicates: int = 0
    dead: int = 0
    states: int = 0
    gaps: int = 0
    feedback_rows: int = 0
    dead_reasons: list[str] = field(default_factory=list)
    acks: dict[tuple[str, int], dict[str, int]] = field(default_factory=dict)
    """(device, epoch) -> stream -> watermark, committed with this batch (end-to-end acknowledgement)."""


def parse_message(incoming: Incoming) -> Parsed | str | None:
    """A validated message, or the reason it is a dead letter (str), or None for what is not ours to store."""
    topic = parse_device_topic(incoming.topic)
    if topic is None:
        return f"topic {incoming.topic!r} is not edgeloop/v1/devices/DEVICE/KIND"
    device, kind = topic
    model = _MODELS.get(kind)
    if model is None:
        return None if kind == "desired" else f"unknown message kind {kind!r} on {incoming.topic}"
    if not incoming.payload:
        return None if kind in ("reported", "status") else f"empty payload on {incoming.topic}"
    try:
        data = orjson.loads(incoming.payload)
    except orjson.JSONDecodeError as exc:
        return f"malformed JSON: {exc}"
    if not isinstance(data, dict):
        return f"payload is a JSON {type(data).__name__}, not an object"
    if data.get("schema_version") != "v1":
        return f"schema_version {data.get('schema_version')!r} is not v1"
    try:
        message = model.model_validate(data)
        if kind == "telemetry":
            epoch(message.window_start), epoch(message.window_end)  # type: ignore[attr-defined]
        elif kind == "feedback":
            [epoch(row.made_at) for row in message.rows]  # type: ignore[attr-defined]
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(root)"
        return f"does not match {model.__name__} v1 at {where}: {first['msg']}"
    except ValueError as exc:
        return f"bad timestamp: {exc}"
    if message.device_id != device:  # type: ignore[attr-defined]
        return f"device_id {message.device_id!r} in the payload does not match the topic's {device!r}"  # type: ignore[attr-defined]
    return Parsed(device, kind, message, incoming)


class IngestWriter:
    def __init__(self, store: Store, *, clock_tolerance_s: float = 2.0) -> None:
        self.store = store
        self.clock_tolerance_s = clock_tolerance_s

    def write(self, batch: list[Incoming]) -> BatchResult:
        """Parse and store a batch in one transaction (raises only on database errors)."""
        result = BatchResult()
        parsed: list[Parsed] = []
        dead: list[dict[str, Any]] = []
        for incoming in batch:
            outcome = parse_message(incoming)
            if isinstance(outcome, Parsed):
                parsed.append(outcome)
            elif isinstance(outcome, str):
                dead.append(_dead_row(incoming, outcome))
                result.dead_reasons.append(outcome)
        clocks = measure((p.device_id, p.incoming.received_at, p.incoming.sent_at) for p in parsed)
        shifts = {device: correction(reading, self.clock_tolerance_s) for device, reading in clocks.items()}
        with self.store.begin() as conn:
            if dead:
                conn.execute(dead_letters.insert(), dead)
                result.dead = len(dead)
            self._write_stream(conn, [p for p in parsed if p.kind == "telemetry"], "telemetry", result, shifts)
            self._write_stream(conn, [p for p in parsed if p.kind == "events"], "events", result)
            self._write_feedback(conn, [p for p in parsed if p.kind == "feedback"], result)
            self._write_devices(conn, parsed, result, clocks)
            committed: dict[tuple[str, int, str], set[int]] = {}
            floors: dict[tuple[str, int, str], int] = {}
            for item in parsed:
                if item.kind in STREAMS:
                    key = (item.device_id, item.message.epoch, item.kind)
                    committed.setdefault(key, set()).add(item.message.seq)
                    floor = getattr(item.message, "outbox_floor", None)
                    if floor is not None:
                        floors[key] = max(floor, floors.get(key, 0))
            if committed:
                result.acks = advance(conn, committed, parsed[0].incoming.received_at, floors)
        return result

    def _write_feedback(self, conn: Connection, items: list[Parsed], result: BatchResult) -> None:
        """Opt-in feedback rows; idempotent on (device, prediction id), so a redelivery inserts nothing."""
        rows = []
        for item in items:
            message: FeedbackRows = item.message
            for row in message.rows:
                rows.append(
                    {
                        "device_id": message.device_id,
                        "prediction_id": row.prediction_id,
                        "seq": message.seq,
                        "group_name": message.group,
                        "model_name": message.model_name,
                        "model_version": message.model_version,
                        "made_at": epoch(row.made_at),
                        "received_at": item.incoming.received_at,
                        "predicted": None if row.predicted is None else str(row.predicted),
                        "actual": str(row.actual),
                        "features": row.features,
                    }
                )
        if rows:
            inserted = conn.execute(self.store.insert_ignore(feedback_rows, ["device_id", "prediction_id"]), rows)
            result.feedback_rows += max(inserted.rowcount, 0) if inserted.rowcount is not None else len(rows)

    def write_dead(self, incoming: Incoming, reason: str) -> None:
        with self.store.begin() as conn:
            conn.execute(dead_letters.insert(), [_dead_row(incoming, reason)])

    # -- streams ------------------------------------------------------------------------------------
    def _write_stream(
        self,
        conn: Connection,
        items: list[Parsed],
        stream: str,
        result: BatchResult,
        shifts: dict[str, float] | None = None,
    ) -> None:
        if not items:
            return
        table = windows if stream == "telemetry" else events
        unique: dict[tuple[str, int, int], Parsed] = {}
        for item in items:
            unique.setdefault((item.device_id, item.message.epoch, item.message.seq), item)
        keys = list(unique)
        existing: set[tuple[str, int, int]] = set()
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            query = sa.select(table.c.device_id, table.c.epoch, table.c.seq).where(
                sa.tuple_(table.c.device_id, table.c.epoch, table.c.seq).in_(chunk)
            )
            existing.update((row.device_id, row.epoch, row.seq) for row in conn.execute(query))
        new = [unique[key] for key in keys if key not in existing]
        result.duplicates += len(items) - len(new)
        if not new:
            return
        self._track_gaps(conn, table, stream, new, result)
        shifts = shifts or {}
        rows = [_window_row(p, shifts.get(p.device_id, 0.0)) if stream == "telemetry" else _event_row(p) for p in new]
        conn.execute(self.store.insert_ignore(table, ["device_id", "epoch", "seq"]), rows)
        if stream == "telemetry":
            result.windows += len(rows)
        else:
            result.events += len(rows)
            audited = []
            for item in new:
                event: DeviceEvent = item.message
                if event.kind in _AUDITED_EVENTS:
                    audited.append(
                        {
                            "at": item.incoming.received_at,
                            "actor": f"device:{event.device_id}",
                            "action": _AUDITED_EVENTS[event.kind],
                            "target": f"{event.model_name}/{event.model_version} on {event.device_id}",
                            "reason": event.reason,
                            "details": {"seq": event.seq, "event_at": event.at, **event.details},
                        }
                    )
            audit.record_many(conn, audited)  # one executemany: a rollout's events arrive by the thousand

    def _track_gaps(
        self, conn: Connection, table: sa.Table, stream: str, new: list[Parsed], result: BatchResult
    ) -> None:
        """Sequence numbers are contiguous per (device, epoch): a jump is a gap, a late arrival fills one."""
        by_source: dict[tuple[str, int], list[int]] = {}
        for item in new:
            by_source.setdefault((item.device_id, item.message.epoch), []).append(item.message.seq)
        highest: dict[tuple[str, int], int] = {}
        sources = list(by_source)
        for start in range(0, len(sources), 500):
            query = (
                sa.select(table.c.device_id, table.c.epoch, sa.func.max(table.c.seq).label("top"))
                .where(sa.tuple_(table.c.device_id, table.c.epoch).in_(sources[start : start + 500]))
                .group_by(table.c.device_id, table.c.epoch)
            )
            highest.update({(row.device_id, row.epoch): int(row.top) for row in conn.execute(query)})
        now = new[0].incoming.received_at
        found: list[dict[str, Any]] = []
        for (device, outbox_epoch), seqs in by_source.items():
            top = highest.get((device, outbox_epoch), 0)
            for seq in sorted(seqs):
                if seq > top + 1:
                    found.append(
                        {
                            "device_id": device,
                            "stream": stream,
                            "epoch": outbox_epoch,
                            "first_missing": top + 1,
                            "last_missing": seq - 1,
                            "filled": 0,
                            "detected_at": now,
                        }
                    )
                elif seq <= top:
                    conn.execute(
                        gaps.update()
                        .where(gaps.c.device_id == device, gaps.c.stream == stream, gaps.c.epoch == outbox_epoch)
                        .where(gaps.c.first_missing <= seq, gaps.c.last_missing >= seq)
                        .values(filled=gaps.c.filled + 1)
                    )
                top = max(top, seq)
        if found:
            conn.execute(gaps.insert(), found)
            result.gaps += len(found)

    # -- device table -------------------------------------------------------------------------------
    def _write_devices(
        self, conn: Connection, parsed: list[Parsed], result: BatchResult, clocks: dict[str, ClockReading]
    ) -> None:
        seen: dict[str, dict[str, Any]] = {}
        status: dict[str, dict[str, Any]] = {}
        reported: dict[str, dict[str, Any]] = {}
        unacked: dict[str, dict[str, Any]] = {}
        for item in parsed:  # in arrival order: the last message of a kind wins
            device, at = item.device_id, item.incoming.received_at
            row = seen.setdefault(device, {"device_id": device, "group_name": None, "first_seen": at, "last_seen": at})
            row["last_seen"] = max(row["last_seen"], at)
            group = getattr(item.message, "group", None)
            if group:
                row["group_name"] = group
            if item.kind == "telemetry" and item.message.unacknowledged is not None:
                window: TelemetryWindow = item.message
                shift = correction(clocks.get(device), self.clock_tolerance_s)
                end, known = epoch(window.window_end) + shift, unacked.get(device)
                if known is None or end >= known["b_at"]:
                    unacked[device] = {"b_device": device, "b_at": end, "unacknowledged": window.unacknowledged,
                                       "unacknowledged_oldest_s": window.unacknowledged_oldest_s}  # fmt: skip
            if item.kind == "status":
                status[device] = {"device_id": device, "online": item.message.online, "status_at": at}
            elif item.kind == "reported":
                state: ReportedState = item.message
                reported[device] = {
                    "device_id": device,
                    "model_name": state.model_name,
                    "model_version": state.model_version,
                    "bundle_sha256": state.bundle_sha256,
                    "state": state.state,
                    "last_error": state.last_error,
                    "agent_version": state.agent_version,
                    "reported_at": at,
                    "labels": state.labels,
                }
        if not seen:
            return
        # One upsert per set of columns to change (the group when known, the clock offset when measured): the
        # clock rides on the row's upsert, batched, not on an UPDATE per device (bench/bench_clock_ingest.py).
        by_columns: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for row in seen.values():
            reading = clocks.get(row["device_id"])
            if reading is not None:
                row |= {"clock_offset_s": reading.offset_s, "clock_offset_at": reading.measured_at}
            changed = tuple(key for key in row if key not in ("device_id", "first_seen", "group_name"))
            by_columns.setdefault(("group_name", *changed) if row["group_name"] else changed, []).append(row)
        for changing, rows in by_columns.items():
            conn.execute(self.store.upsert(devices, "device_id", list(changing)), rows)
        if status:
            conn.execute(
                devices.update().where(devices.c.device_id == sa.bindparam("b_device")),
                [{"b_device": d, "online": r["online"], "status_at": r["status_at"]} for d, r in status.items()],
            )
        if reported:
            columns = [key for key in next(iter(reported.values())) if key != "device_id"]
            conn.execute(
                devices.update().where(devices.c.device_id == sa.bindparam("b_device")),
                [{"b_device": d, **{c: r[c] for c in columns}} for d, r in reported.items()],
            )
        if unacked:  # the newest window's view wins, whatever order resent windows arrive in
            newer = sa.or_(devices.c.unacknowledged_at.is_(None), devices.c.unacknowledged_at <= sa.bindparam("b_at"))
            conn.execute(
                devices.update()
                .where(devices.c.device_id == sa.bindparam("b_device"), newer)
                .values(unacknowledged_at=sa.bindparam("b_at")),
                list(unacked.values()),
            )
        result.states += len(status) + len(reported)


def _dead_row(incoming: Incoming, reason: str) -> dict[str, Any]:
    return {
        "topic": incoming.topic,
        "payload": incoming.payload[:_MAX_DEAD_PAYLOAD],
        "reason": reason,
        "received_at": incoming.received_at,
    }


def _window_row(item: Parsed, shift: float = 0.0) -> dict[str, Any]:
    """A window's row, its times on the cloud's clock (`shift`: the device's offset beyond the tolerance)."""
    window: TelemetryWindow = item.message
    return {
        "device_id": window.device_id,
        "epoch": window.epoch,
        "seq": window.seq,
        "group_name": window.group,
        "model_name": window.model_name,
        "model_version": window.model_version,
        "window_start": epoch(window.window_start) + shift,
        "window_end": epoch(window.window_end) + shift,
        "received_at": item.incoming.received_at,
        "requests": window.requests,
        "errors": sum(window.errors.values()),
        "payload": item.incoming.payload.decode(),
    }


def _event_row(item: Parsed) -> dict[str, Any]:
    event: DeviceEvent = item.message
    return {
        "device_id": event.device_id,
        "epoch": event.epoch,
        "seq": event.seq,
        "kind": event.kind,
        "model_name": event.model_name,
        "model_version": event.model_version,
        "reason": event.reason,
        "details": event.details,
        "at": event.at,
        "received_at": item.incoming.received_at,
    }
