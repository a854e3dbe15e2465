"""Stores made before Alembic took over (cloud_sync/store/migrations): what the hand-written start-up checks
did, kept for the baseline revision, which runs it on a store that has tables but no `alembic_version`.

Each step looks before it changes anything, so it brings any older store (of any release before the baseline)
up to the baseline schema: columns appended after a table's first release, the re-keying of windows and events
on (device, epoch, seq), and the device-level overrides of a store older than `desired_overrides`. The tables
passed in are the baseline's frozen copies, never db.py's (which grow with later revisions).
"""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.schema import CreateColumn

from contracts.logs import log_event

__all__ = ["LATER_COLUMNS", "bring_to_baseline"]

logger = logging.getLogger("edgeloop.cloud.store")

# table -> columns appended after its first release (each added as the baseline table defines it)
LATER_COLUMNS: dict[str, tuple[str, ...]] = {
    "rollouts": ("mode", "selector", "stages", "stage", "stage_devices", "pacing", "next_switch_at"),
    "gaps": ("epoch",),
    "alerts": ("p_value", "records", "resolution"),
    "devices": (
        "unacknowledged",
        "unacknowledged_oldest_s",
        "unacknowledged_at",
        "labels",
        "clock_offset_s",
        "clock_offset_at",
    ),
}


def bring_to_baseline(conn: Connection, schema: str | None, tables: dict[str, sa.Table], created: set[str]) -> None:
    """An older store, its missing tables (`created`) already made from the baseline: add the later columns,
    re-key windows and events on epochs, record past canaries as overrides."""
    inspector = sa.inspect(conn)
    for table, columns in LATER_COLUMNS.items():
        if table in created:
            continue
        present = {column["name"] for column in inspector.get_columns(table, schema=schema)}
        for column in columns:
            if column not in present:  # its type, NOT NULL and default as CREATE TABLE would write them
                definition = CreateColumn(tables[table].c[column]).compile(dialect=conn.dialect)
                conn.exec_driver_sql(f"ALTER TABLE {_qualified(table, schema)} ADD COLUMN {definition}")
    for name in ("windows", "events"):
        if name not in created and "epoch" not in {c["name"] for c in inspector.get_columns(name, schema=schema)}:
            _rekey_on_epoch(conn, tables[name], schema)
    if "desired_overrides" in created:
        _seed_overrides(conn, tables["rollouts"], tables["desired_overrides"])


def _qualified(table: str, schema: str | None) -> str:
    return f'"{schema}".{table}' if schema else table


def _rekey_on_epoch(conn: Connection, table: sa.Table, schema: str | None) -> None:
    """A store from before outbox epochs: add `epoch` (0 for every stored row) and key on (device, epoch, seq).
    PostgreSQL changes the table in place; SQLite cannot drop a constraint, so the table is copied."""
    name = _qualified(table.name, schema)
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"ALTER TABLE {name} ADD COLUMN epoch BIGINT NOT NULL DEFAULT 0")
        conn.exec_driver_sql(f"ALTER TABLE {name} DROP CONSTRAINT IF EXISTS uq_{table.name}_device_seq")
        conn.exec_driver_sql(
            f"ALTER TABLE {name} ADD CONSTRAINT uq_{table.name}_device_epoch_seq UNIQUE (device_id, epoch, seq)"
        )
        return
    old = f"{table.name}_before_epoch"
    conn.exec_driver_sql(f"ALTER TABLE {table.name} RENAME TO {old}")
    for index in table.indexes:
        conn.exec_driver_sql(f"DROP INDEX IF EXISTS {index.name}")
    table.create(conn)
    columns = ", ".join(column.name for column in table.columns if column.name != "epoch")
    conn.exec_driver_sql(f"INSERT INTO {table.name} ({columns}) SELECT {columns} FROM {old}")
    conn.exec_driver_sql(f"DROP TABLE {old}")
    log_event(logger, "store migrated: keyed on (device, epoch, seq)", table=table.name)


def _seed_overrides(conn: Connection, rollouts: sa.Table, desired_overrides: sa.Table) -> None:
    """A store older than `desired_overrides`: every canary device of a past rollout may hold a retained
    device-level desired state, so each is recorded once (clearing one that holds none is harmless)."""
    rows: dict[str, dict[str, Any]] = {}
    for rollout in conn.execute(
        sa.select(rollouts.c.id, rollouts.c.group_name, rollouts.c.canary, rollouts.c.created_at)
    ):
        for device in rollout.canary or []:
            rows[device] = {"device_id": device, "group_name": rollout.group_name, "rollout_id": rollout.id,
                            "published_at": rollout.created_at}  # fmt: skip
    if rows:
        conn.execute(desired_overrides.insert(), list(rows.values()))
