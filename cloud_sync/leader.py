"""One leader among the cloud's replicas: the rollout controller, alert evaluation, retrain triggers and
retention run only in the replica that holds the leadership; API, dashboard, downloads and ingest run in all.

- `ImplicitLeader` (SQLite: one box, one process): always the leader.
- `AdvisoryLockLeader` (PostgreSQL): a session-level advisory lock, keyed by the store's schema, held on a
  dedicated connection. The lock dies with that connection, so a killed replica frees it as soon as
  PostgreSQL sees the socket close. Every tick the holder checks its connection; if the check fails it stops
  its loops first and only then drops the connection, so another replica can take the lock only after.
  A frozen holder (SIGSTOP, swap) keeps its session and the lock: the others terminate its lock connection
  (`pg_terminate_backend`) once it has been idle for `stale_ticks` ticks, and take the lock.
- `LoopStop`: the loops' stop event. Set when leadership ends; its `wait()` also holds a loop before its next
  tick while the leadership is unconfirmed for half the stale bound (a holder that was frozen and resumed does
  not act on leadership it may have lost, and stops once its check fails).

    leadership = leadership_for(store, tick_s=1.0, stale_ticks=5)
    leadership.run(stop, on_gain=start_loops, on_lose=stop_loops)   # a thread, until `stop` is set
    loops_stop = LoopStop(leadership.confirmed, poll_s=0.1)       # what start_loops hands the loops

The failure cases are in docs/cloud.md ("One leader").
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.pool import NullPool

from cloud_sync.store.db import Store
from contracts.logs import log_event

__all__ = ["AdvisoryLockLeader", "ImplicitLeader", "Leadership", "LoopStop", "leader_key", "leadership_for"]

logger = logging.getLogger("edgeloop.cloud.leader")

Hook = Callable[[], None]


class Leadership:
    """Runs `on_gain` when this replica becomes the leader and `on_lose` when it stops being one."""

    def is_leader(self) -> bool:
        raise NotImplementedError

    def confirmed(self) -> bool:
        """Leader, and sure of it recently enough to act (the loops check this before every tick)."""
        raise NotImplementedError

    def run(self, stop: threading.Event, on_gain: Hook, on_lose: Hook) -> None:
        raise NotImplementedError


class ImplicitLeader(Leadership):
    """SQLite: one process owns the store, so it leads from start to stop."""

    def __init__(self) -> None:
        self._leading = False

    def is_leader(self) -> bool:
        return self._leading

    def confirmed(self) -> bool:
        return self._leading

    def run(self, stop: threading.Event, on_gain: Hook, on_lose: Hook) -> None:
        self._leading = True
        on_gain()
        stop.wait()
        self._leading = False
        on_lose()


def leader_key(schema: str | None) -> int:
    """The advisory lock's 64-bit key: one per schema, so clouds on different schemas of one database each
    elect their own leader (and never collide with Store.create()'s lock)."""
    digest = hashlib.blake2b(f"edgeloop-leader:{schema or ''}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class AdvisoryLockLeader(Leadership):
    """PostgreSQL: leader while `pg_try_advisory_lock(key)` holds on this replica's own connection."""

    def __init__(self, store: Store, tick_s: float, stale_ticks: int = 5, *, connect_timeout_s: float = 5.0) -> None:
        self.tick_s = tick_s
        # A holder whose lock connection has been idle this long (its check runs every tick) is taken for frozen;
        # the holder itself acts only within half of it after its last successful check.
        self.stale_s = stale_ticks * tick_s
        self.key = leader_key(store.schema)
        # Its own engine without a pool: the connection that holds the lock is never handed to other work.
        # Keepalives let PostgreSQL notice a replica that vanished without closing its socket (power loss).
        self._engine = sa.create_engine(
            store.url,
            poolclass=NullPool,
            connect_args={"connect_timeout": int(connect_timeout_s), "keepalives": 1, "keepalives_idle": 5,
                          "keepalives_interval": 2, "keepalives_count": 3, "application_name": "edgeloop-leader"},
        )  # fmt: skip
        self._conn: Connection | None = None
        self._leading = False
        self._confirmed_at = float("-inf")  # time.monotonic() of the last check that found the lock ours

    def is_leader(self) -> bool:
        return self._leading

    def confirmed(self) -> bool:
        return self._leading and time.monotonic() - self._confirmed_at < self.stale_s / 2

    def run(self, stop: threading.Event, on_gain: Hook, on_lose: Hook) -> None:
        try:
            while not stop.is_set():
                if self._leading and not self._still_held():
                    self._leading = False
                    on_lose()  # the loops stop before the connection (and so the lock) is dropped
                    self._drop()
                    log_event(logger, "leadership lost: loops stopped", level=logging.WARNING, key=self.key)
                elif not self._leading and self._try_acquire():
                    self._leading = True
                    log_event(logger, "leadership acquired: this replica runs the controller loops", key=self.key)
                    on_gain()
                stop.wait(self.tick_s)
        finally:
            if self._leading:
                self._leading = False
                on_lose()
            self._drop()
            self._engine.dispose()

    def _try_acquire(self) -> bool:
        try:
            if self._conn is None:
                self._conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            held = bool(self._try_lock(self._conn))
            if not held and self._terminate_frozen_holder(self._conn):
                held = bool(self._try_lock(self._conn))
            if held:
                self._confirmed_at = time.monotonic()
            return held
        except sa.exc.SQLAlchemyError as exc:
            log_event(logger, "leader election: store unreachable", level=logging.WARNING, error=_first_line(exc))
            self._drop()
            return False

    def _still_held(self) -> bool:
        """The connection answers and the lock is still ours (pg_locks of this backend)."""
        if self._conn is None:
            return False
        try:
            held = self._conn.execute(
                sa.text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() "
                    "AND granted AND objsubid = 1 AND classid::bigint = :high AND objid::bigint = :low"
                ),
                {"high": (self.key >> 32) & 0xFFFFFFFF, "low": self.key & 0xFFFFFFFF},
            ).scalar_one()
            if held:
                self._confirmed_at = time.monotonic()
            return bool(held)
        except sa.exc.SQLAlchemyError as exc:
            log_event(logger, "leader connection failed", level=logging.WARNING, error=_first_line(exc))
            return False

    def _try_lock(self, conn: Connection) -> bool:
        return bool(conn.execute(sa.text("SELECT pg_try_advisory_lock(:key)"), {"key": self.key}).scalar_one())

    def _terminate_frozen_holder(self, conn: Connection) -> bool:
        """End the lock connection of a holder that has not run its check for `stale_s` (its backend idle that
        long, by the database's clock: no clock comparison between replicas). Waits up to 2 s for it to go."""
        rows = conn.execute(
            sa.text(
                "SELECT a.pid, extract(epoch FROM clock_timestamp() - a.state_change) AS idle_s,"
                " pg_terminate_backend(a.pid, 2000) AS terminated"
                " FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
                " WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1"
                " AND l.classid::bigint = :high AND l.objid::bigint = :low"
                " AND a.pid <> pg_backend_pid() AND a.application_name = 'edgeloop-leader' AND a.state = 'idle'"
                " AND a.state_change < clock_timestamp() - make_interval(secs => :stale_s)"
            ),
            {"high": (self.key >> 32) & 0xFFFFFFFF, "low": self.key & 0xFFFFFFFF, "stale_s": self.stale_s},
        ).all()
        for pid, idle_s, terminated in rows:
            log_event(logger, "frozen leader's lock connection terminated", level=logging.WARNING, pid=pid,
                      idle_s=round(float(idle_s), 2), stale_s=self.stale_s, terminated=terminated)  # fmt: skip
        return any(terminated for _, _, terminated in rows)

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.invalidate()
                self._conn.close()
            except sa.exc.SQLAlchemyError:
                pass
            self._conn = None


def leadership_for(store: Store, tick_s: float, stale_ticks: int = 5) -> Leadership:
    """Advisory-lock election on PostgreSQL, the implicit leader on SQLite."""
    return AdvisoryLockLeader(store, tick_s, stale_ticks) if store.dialect == "postgresql" else ImplicitLeader()


class LoopStop(threading.Event):
    """The stop event handed to the leader's loops (`while not stop.wait(interval): tick()`): set when the
    leadership ends. Its `wait` also holds the loop back, before its next tick, while `confirmed()` is false:
    a replica that was frozen past the stale bound resumes with its leadership unconfirmed and its loops wait
    until its check either confirms the lock (they go on) or finds it lost (the event is set, they return)."""

    def __init__(self, confirmed: Callable[[], bool], poll_s: float) -> None:
        super().__init__()
        self._confirmed = confirmed
        self._poll_s = poll_s

    def wait(self, timeout: float | None = None) -> bool:
        if super().wait(timeout):
            return True
        held_back = False
        while not self._confirmed():
            if not held_back:
                held_back = True
                log_event(logger, "leadership unconfirmed: loop held back", level=logging.WARNING,
                          loop=threading.current_thread().name)  # fmt: skip
            if super().wait(self._poll_s):
                return True
        if held_back:
            log_event(logger, "leadership confirmed: loop resumes", loop=threading.current_thread().name)
        return False


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    return str(orig or exc).strip().splitlines()[0] if str(orig or exc).strip() else type(exc).__name__
