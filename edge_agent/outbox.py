"""The on-disk outbox: every telemetry window and event is written here first (SQLite, WAL, synchronous
FULL) and deleted only after the broker acknowledged it (QoS 1 PUBACK), so a broker outage, a crash or a
power cut loses nothing.

Each stream (`telemetry`, `events`) has its own per-device sequence number, allocated in the same
transaction that stores the message, so numbers are contiguous and survive restarts. The outbox is
bounded: past `max_messages`, the oldest telemetry windows are dropped (events are kept) and the loss is
counted in `dropped` so the next window reports it; never silent.

A message the broker refuses (MQTT 5 PUBACK reason code >= 0x80, e.g. 0x87 not authorized by its ACL) is never
deleted: it is marked `refused` with the reason code and held back until `retry_at`, then offered again (the
publisher also releases every held message after a reconnection). Refusals are counted in `refused_total`.

End-to-end acknowledgement (docs/mqtt.md): while the cloud acknowledges, a message the broker PUBACKed is kept
with `sent_at` set until the cloud's watermark covers it (`cover`); `release_sent` makes kept messages pending
again so they are sent once more, oldest first.

A new outbox (a new or wiped state directory) gets an `epoch`, its creation time in Unix milliseconds, that
every message carries: sequence numbers restart at 1 with it, and the cloud keys messages on (device, epoch,
seq), so a reinstalled device's windows are not mistaken for duplicates. An outbox made before epochs existed
keeps epoch 0.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Outbox", "PendingMessage"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    stream TEXT NOT NULL,
    seq INTEGER NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    refused INTEGER,
    retry_at REAL,
    sent_at REAL,
    UNIQUE (stream, seq)
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""


@dataclass(frozen=True)
class PendingMessage:
    id: int
    stream: str
    seq: int
    topic: str
    payload: bytes


class Outbox:
    def __init__(self, path: Path, max_messages: int = 50_000) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_messages = max_messages
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        existed = self._db.execute("SELECT 1 FROM sqlite_master WHERE name = 'counters'").fetchone() is not None
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(outbox)")}
        for column, kind in (("refused", "INTEGER"), ("retry_at", "REAL"), ("sent_at", "REAL")):  # older outboxes
            if column not in columns:
                self._db.execute(f"ALTER TABLE outbox ADD COLUMN {column} {kind}")
        self.epoch = self._load_epoch(existed)
        """Creation time of this outbox (Unix ms), carried by every message; 0 for a pre-epoch outbox."""

    def _load_epoch(self, existed: bool) -> int:
        row = self._db.execute("SELECT value FROM counters WHERE name = 'epoch'").fetchone()
        if row is not None:
            return int(row[0])
        epoch = 0 if existed else time.time_ns() // 1_000_000
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._set_counter("epoch", epoch)
            self._db.execute("COMMIT")
        return epoch

    def append(self, stream: str, topic: str, build: Callable[[int], bytes]) -> int:
        """Allocate the next sequence number of `stream`, build the payload with it and store it durably."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                seq = self._counter(f"seq:{stream}") + 1
                payload = build(seq)
                self._db.execute(
                    "INSERT INTO outbox (stream, seq, topic, payload) VALUES (?, ?, ?, ?)",
                    (stream, seq, topic, payload),
                )
                self._set_counter(f"seq:{stream}", seq)
                self._enforce_cap()
                self._db.execute("COMMIT")
            except BaseException:
                # SQLite has already rolled back on some errors (SQLITE_FULL: disk full); a second ROLLBACK
                # would raise and hide the real error.
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            return seq

    def _counter(self, name: str) -> int:
        row = self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def _set_counter(self, name: str, value: int) -> None:
        self._db.execute(
            "INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = excluded.value",
            (name, value),
        )

    def _enforce_cap(self) -> None:
        (count,) = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()
        excess = int(count) - self.max_messages
        if excess > 0:
            dropped = self._db.execute(
                "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE stream = 'telemetry' ORDER BY id LIMIT ?)",
                (excess,),
            ).rowcount
            self._set_counter("dropped:telemetry", self._counter("dropped:telemetry") + dropped)

    def pending(self, limit: int, after_id: int = 0) -> list[PendingMessage]:
        """The oldest unacknowledged messages with id > after_id, in the order they were written (refused
        messages held back are left out)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, stream, seq, topic, payload FROM outbox"
                " WHERE id > ? AND retry_at IS NULL AND sent_at IS NULL ORDER BY id LIMIT ?",
                (after_id, limit),
            ).fetchall()
        return [PendingMessage(int(r[0]), r[1], int(r[2]), r[3], bytes(r[4])) for r in rows]

    def refuse_many(self, refusals: list[tuple[int, int]], retry_at: float) -> None:
        """Mark messages `(id, reason code)` the broker refused; they are held back until `retry_at` (Unix s)."""
        if not refusals:
            return
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "UPDATE outbox SET refused = ?, retry_at = ? WHERE id = ?",
                [(code, retry_at, message_id) for message_id, code in refusals],
            )
            self._set_counter("refused:total", self._counter("refused:total") + len(refusals))
            self._db.execute("COMMIT")

    def due_refused(self, limit: int, now: float, retry_at: float) -> list[PendingMessage]:
        """Refused messages whose hold ended by `now`, oldest first; each is held again until `retry_at` (so it
        is offered once per hold, not in a loop) unless its PUBACK now succeeds and deletes it."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            rows = self._db.execute(
                "SELECT id, stream, seq, topic, payload FROM outbox WHERE retry_at <= ? ORDER BY id LIMIT ?",
                (now, limit),
            ).fetchall()
            self._db.executemany("UPDATE outbox SET retry_at = ? WHERE id = ?", [(retry_at, r[0]) for r in rows])
            self._db.execute("COMMIT")
        return [PendingMessage(int(r[0]), r[1], int(r[2]), r[3], bytes(r[4])) for r in rows]

    def release_refused(self) -> int:
        """End the hold of every refused message (after a reconnection): they go out again with the rest, in
        order. Returns how many were released."""
        with self._lock:
            return int(self._db.execute("UPDATE outbox SET retry_at = NULL WHERE retry_at IS NOT NULL").rowcount)

    def acknowledge(self, message_id: int) -> None:
        self.acknowledge_many([message_id])

    def acknowledge_many(self, message_ids: list[int]) -> None:
        """Delete acknowledged messages in one transaction (one fsync for the lot)."""
        if not message_ids:
            return
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in message_ids])
            self._db.execute("COMMIT")

    def size(self) -> int:
        with self._lock:
            (count,) = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()
        return int(count)

    def last_seq(self, stream: str) -> int:
        with self._lock:
            return self._counter(f"seq:{stream}")

    def mark_sent(self, message_ids: list[int], at: float) -> None:
        """The broker PUBACKed these; keep them until the cloud's watermark covers them (one transaction)."""
        if not message_ids:
            return
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "UPDATE outbox SET sent_at = ?, refused = NULL, retry_at = NULL WHERE id = ?",
                [(at, i) for i in message_ids],
            )
            self._db.execute("COMMIT")

    def cover(self, epoch: int, watermarks: dict[str, int]) -> int:
        """Delete what the cloud stored: every message of `stream` with seq <= its watermark (this epoch only).
        Returns how many were deleted."""
        if epoch != self.epoch or not watermarks:
            return 0
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            deleted = sum(
                self._db.execute("DELETE FROM outbox WHERE stream = ? AND seq <= ?", (stream, seq)).rowcount
                for stream, seq in watermarks.items()
            )
            if self._counter("ack:seen") == 0:
                self._set_counter("ack:seen", 1)
            self._db.execute("COMMIT")
        return int(deleted)

    def release_sent(self, before: float | None = None) -> int:
        """Make kept messages (PUBACKed, not covered) pending again, those sent before `before` or all of them;
        returns how many."""
        with self._lock:
            if before is None:
                cursor = self._db.execute("UPDATE outbox SET sent_at = NULL WHERE sent_at IS NOT NULL")
            else:
                cursor = self._db.execute("UPDATE outbox SET sent_at = NULL WHERE sent_at <= ?", (before,))
            return int(cursor.rowcount)

    def delete_sent(self) -> int:
        """Delete every kept message (falling back to delete-on-PUBACK); returns how many."""
        with self._lock:
            return int(self._db.execute("DELETE FROM outbox WHERE sent_at IS NOT NULL").rowcount)

    def unacknowledged(self) -> tuple[int, float | None]:
        """Messages the broker acknowledged and the cloud has not yet: (count, oldest sent_at or None)."""
        with self._lock:
            count, oldest = self._db.execute(
                "SELECT COUNT(*), MIN(sent_at) FROM outbox WHERE sent_at IS NOT NULL"
            ).fetchone()
        return int(count), None if oldest is None else float(oldest)

    def floor(self, stream: str) -> int | None:
        """The lowest seq of `stream` still held (None when none is)."""
        with self._lock:
            (low,) = self._db.execute("SELECT MIN(seq) FROM outbox WHERE stream = ?", (stream,)).fetchone()
        return None if low is None else int(low)

    def unsent(self) -> int:
        """Messages not yet acknowledged by the broker (kept ones excluded)."""
        with self._lock:
            (count,) = self._db.execute("SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL").fetchone()
        return int(count)

    @property
    def ack_seen(self) -> bool:
        """The cloud has acknowledged at least once since this outbox was created (it speaks end-to-end acks)."""
        with self._lock:
            return self._counter("ack:seen") > 0

    def refused_held(self) -> int:
        """Messages in the outbox whose last publish the broker refused."""
        with self._lock:
            (count,) = self._db.execute("SELECT COUNT(*) FROM outbox WHERE refused IS NOT NULL").fetchone()
        return int(count)

    @property
    def refused_total(self) -> int:
        """Publishes the broker refused, since the state directory was created (a retry refused again counts)."""
        with self._lock:
            return self._counter("refused:total")

    @property
    def dropped(self) -> int:
        """Telemetry windows dropped because the outbox was full, since the state directory was created."""
        with self._lock:
            return self._counter("dropped:telemetry")

    def close(self) -> None:
        with self._lock:
            self._db.close()
