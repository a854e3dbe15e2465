"""Feedback rows from devices (opt-in on the agent): read them for retraining, and keep them bounded.

    rows_for(store, "machine-failure", limit=50_000)   # the newest labelled rows, oldest first
    prune(store, retention_s=30 * 86400, max_rows=1_000_000)

Retention is bounded twice: rows older than `feedback_rows_retention_days` and rows beyond the newest
`feedback_rows_max` are deleted (the service prunes every few minutes).
"""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa

from cloud_sync.store.audit import iso
from cloud_sync.store.db import Store, feedback_rows

__all__ = ["prune", "rows_for"]


def rows_for(
    store: Store, model: str, limit: int = 50_000, version: int | None = None, group: str | None = None
) -> list[dict[str, Any]]:
    """The newest `limit` rows of a model (optionally one version or group), returned oldest first."""
    c = feedback_rows.c
    query = sa.select(feedback_rows).where(c.model_name == model)
    if version is not None:
        query = query.where(c.model_version == version)
    if group:
        query = query.where(c.group_name == group)
    with store.engine.connect() as conn:
        rows = conn.execute(query.order_by(c.received_at.desc(), c.id.desc()).limit(limit)).mappings().all()
    return [
        {
            "device_id": row["device_id"],
            "group": row["group_name"],
            "prediction_id": row["prediction_id"],
            "model_version": row["model_version"],
            "made_at": iso(row["made_at"]),
            "predicted": row["predicted"],
            "actual": row["actual"],
            "features": row["features"],
        }
        for row in reversed(rows)
    ]


def prune(store: Store, retention_s: float, max_rows: int, now: float | None = None) -> int:
    """Delete rows older than the retention and beyond the newest `max_rows`; returns how many went."""
    now = time.time() if now is None else now
    c = feedback_rows.c
    with store.begin() as conn:
        deleted = conn.execute(feedback_rows.delete().where(c.received_at < now - retention_s)).rowcount or 0
        cutoff = conn.execute(sa.select(c.id).order_by(c.id.desc()).offset(max_rows).limit(1)).scalar()
        if cutoff is not None:
            deleted += conn.execute(feedback_rows.delete().where(c.id <= cutoff)).rowcount or 0
    return int(deleted)
