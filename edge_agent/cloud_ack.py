"""End-to-end acknowledgement, the agent's half: the outbox keeps what the broker PUBACKed until the cloud's
watermark (`CloudAck`, retained on edgeloop/v1/devices/{id}/ack) says it is stored, and sends the rest again.

- A watermark covers every message of its stream up to it (this outbox epoch only): those are deleted.
- After a reconnection, everything kept and not covered is sent again, oldest first, through the publisher's
  usual flow control: once the retained acknowledgement has arrived (it is delivered on subscribing), or
  `SETTLE_S` after connecting when none comes (a fresh broker has none).
- A kept message not covered `resend_s` after its PUBACK is sent again (a broker that crashed with it).
- Gaps need no message of their own: the watermark stops below a gap, so what follows it is sent again.
- A cloud from before acknowledgements never sends one: a device that has never received one (remembered in the
  outbox) waits `fallback_s` after a PUBACK, then says so once and deletes on PUBACK as before; the first
  acknowledgement that arrives switches it back.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Literal

from contracts.logs import log_event
from contracts.messages import CloudAck
from edge_agent.outbox import Outbox

__all__ = ["SETTLE_S", "CloudAckTracker"]

logger = logging.getLogger("edgeloop.agent.ack")
SETTLE_S = 1.0
"""After a reconnection, how long to wait for the retained acknowledgement before sending kept messages again."""


class CloudAckTracker:
    def __init__(self, outbox: Outbox, resend_s: float = 30.0, fallback_s: float = 60.0) -> None:
        self.outbox = outbox
        self.resend_s = resend_s
        self.fallback_s = fallback_s
        self.mode: Literal["waiting", "ack", "legacy"] = "ack" if outbox.ack_seen else "waiting"
        """waiting: no acknowledgement seen yet (messages kept); ack: the cloud acknowledges; legacy: it does not
        (delete on PUBACK, as before)."""
        self._lock = threading.Lock()
        self._pending: tuple[int, dict[str, int]] | None = None
        self._release_at: float | None = None
        self._next_check = 0.0
        self.covered = 0
        """Messages deleted because a watermark covered them, since start."""
        self.resent = 0
        """Messages made pending again (reconnection or timeout), since start."""

    @property
    def keep(self) -> bool:
        """Keep a PUBACKed message (True) or delete it (legacy)."""
        return self.mode != "legacy"

    # -- network thread -----------------------------------------------------------------------------
    def on_ack(self, ack: CloudAck) -> bool:
        """Record a watermark for the drain thread; False when it is for another epoch (ignored)."""
        if ack.epoch != self.outbox.epoch:
            return False
        with self._lock:
            if self._pending is not None:
                merged = dict(self._pending[1])
                for stream, seq in ack.watermarks.items():
                    merged[stream] = max(seq, merged.get(stream, 0))
                self._pending = (ack.epoch, merged)
            else:
                self._pending = (ack.epoch, dict(ack.watermarks))
            if self._release_at is not None:
                self._release_at = time.monotonic()  # the retained one arrived: resend what it does not cover
        return True

    def on_connected(self) -> None:
        with self._lock:
            self._release_at = time.monotonic() + SETTLE_S

    # -- drain thread -------------------------------------------------------------------------------
    def step(self) -> bool:
        """Apply watermarks, resend after a reconnection or a timeout, fall back for an old cloud. True when
        messages became pending again (the publisher restarts from the oldest)."""
        now_mono, now = time.monotonic(), time.time()
        with self._lock:
            pending, self._pending = self._pending, None
            due = self._release_at is not None and now_mono >= self._release_at
            if due:
                self._release_at = None
        if pending is not None:
            self.covered += self.outbox.cover(*pending)
            if self.mode != "ack":
                log_event(logger, "the cloud acknowledges what it stored: messages are kept until it has",
                          was=self.mode)  # fmt: skip
                self.mode = "ack"
        released = self.outbox.release_sent() if due and self.keep else 0
        if now_mono >= self._next_check:
            self._next_check = now_mono + min(self.resend_s / 4, 5.0)
            if self.mode == "ack":
                released += self.outbox.release_sent(before=now - self.resend_s)
            elif self.mode == "waiting":
                _count, oldest = self.outbox.unacknowledged()
                if oldest is not None and now - oldest > self.fallback_s:
                    self.mode = "legacy"
                    dropped = self.outbox.delete_sent()
                    log_event(logger, "no acknowledgement from the cloud (older than end-to-end acks?): deleting on "
                              "the broker's PUBACK as before", level=logging.WARNING, waited_s=self.fallback_s,
                              deleted=dropped)  # fmt: skip
        self.resent += released
        return released > 0

    def summary(self) -> dict[str, object]:
        """For /v1/model: the mode and what the cloud has not acknowledged yet (count, oldest age in seconds)."""
        count, oldest = self.outbox.unacknowledged()
        age = None if oldest is None else round(max(time.time() - oldest, 0.0), 3)
        return {"mode": self.mode, "unacknowledged": count, "oldest_s": age, "covered": self.covered,
                "resent": self.resent}  # fmt: skip

    def next_wake(self) -> float:
        """Seconds until `step` has something to do by itself."""
        now = time.monotonic()
        with self._lock:
            release = self._release_at
        until_check = max(self._next_check - now, 0.05)
        return until_check if release is None else min(until_check, max(release - now, 0.05))
