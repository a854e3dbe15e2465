"""End-to-end acknowledgement, the cloud's half: per device, stream and outbox epoch, the watermark `seq` such
that 1..seq are all stored, advanced in the ingest's own transaction, so what it claims is committed.

A batch's sequence numbers (new and duplicate alike: a duplicate is stored too) advance the watermark while they
are contiguous with it. A number above it leaves a hole; `top` remembers the highest stored, and when a later
batch closes the hole the watermark walks on over what telemetry and events already stored (feedback rows are
not keyed on the epoch, so that stream advances with what arrives; the device sends everything uncovered again,
oldest first, so it arrives in order). A telemetry window carries the device's `outbox_floor`, the lowest window
it still holds: below it everything is stored or was dropped by the device's outbox cap (and counted), so the
watermark moves up to it and a hole the device can never fill does not stop it for good.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cloud_sync.store.db import events, watermarks, windows

__all__ = ["STREAMS", "advance"]

STREAMS = {"telemetry": windows, "events": events, "feedback": None}
"""The acknowledged streams, with the table whose (device_id, epoch, seq) rows let a watermark walk a hole."""


def advance(
    conn: Connection,
    seqs: dict[tuple[str, int, str], set[int]],
    now: float,
    floors: dict[tuple[str, int, str], int] | None = None,
) -> dict[tuple[str, int], dict[str, int]]:
    """Advance the watermarks of (device, epoch, stream) -> seqs committed in this transaction (and past a hole
    below a device's `floor`: what it dropped itself never comes); returns every touched (device, epoch) with the
    watermarks of all its streams (what the device is told)."""
    floors = floors or {}
    if not seqs:
        return {}
    keys = list(seqs)
    current: dict[tuple[str, int, str], tuple[int, int]] = {}
    for start in range(0, len(keys), 500):
        chunk = [(device, stream, epoch) for device, epoch, stream in keys[start : start + 500]]
        query = sa.select(watermarks).where(
            sa.tuple_(watermarks.c.device_id, watermarks.c.stream, watermarks.c.epoch).in_(chunk)
        )
        for row in conn.execute(query):
            current[(row.device_id, row.epoch, row.stream)] = (int(row.seq), int(row.top))
    inserts: list[dict[str, Any]] = []
    updates: list[dict[str, Any]] = []
    for key, batch in seqs.items():
        seq, top = current.get(key, (0, 0))
        new_seq, new_top = _walk(max(seq, floors.get(key, 0) - 1), batch), max(top, max(batch))
        table = STREAMS[key[2]]
        if new_top > new_seq and table is not None and new_seq > seq:  # a hole closed: walk what is stored
            new_seq = _walk(new_seq, _stored(conn, table, key[0], key[1], new_seq, new_top))
        values = {"device_id": key[0], "epoch": key[1], "stream": key[2], "seq": new_seq, "top": new_top}
        if key not in current:
            inserts.append({**values, "updated_at": now})
        elif (new_seq, new_top) != current[key]:
            updates.append({f"b_{k}": v for k, v in values.items()} | {"b_updated_at": now})
    if inserts:
        conn.execute(watermarks.insert(), inserts)
    if updates:
        conn.execute(
            watermarks.update()
            .where(watermarks.c.device_id == sa.bindparam("b_device_id"))
            .where(watermarks.c.stream == sa.bindparam("b_stream"))
            .where(watermarks.c.epoch == sa.bindparam("b_epoch"))
            .values(seq=sa.bindparam("b_seq"), top=sa.bindparam("b_top"), updated_at=sa.bindparam("b_updated_at")),
            updates,
        )
    return _all_streams(conn, {(device, epoch) for device, epoch, _ in keys})


def _walk(seq: int, available: set[int]) -> int:
    while seq + 1 in available:
        seq += 1
    return seq


def _stored(conn: Connection, table: sa.Table, device: str, epoch: int, above: int, upto: int) -> set[int]:
    query = sa.select(table.c.seq).where(
        table.c.device_id == device, table.c.epoch == epoch, table.c.seq > above, table.c.seq <= upto
    )
    return {int(seq) for seq in conn.execute(query).scalars()}


def _all_streams(conn: Connection, sources: set[tuple[str, int]]) -> dict[tuple[str, int], dict[str, int]]:
    result: dict[tuple[str, int], dict[str, int]] = defaultdict(dict)
    listed = list(sources)
    for start in range(0, len(listed), 500):
        query = sa.select(watermarks.c.device_id, watermarks.c.epoch, watermarks.c.stream, watermarks.c.seq).where(
            sa.tuple_(watermarks.c.device_id, watermarks.c.epoch).in_(listed[start : start + 500])
        )
        for row in conn.execute(query):
            result[(row.device_id, int(row.epoch))][row.stream] = int(row.seq)
    return dict(result)
