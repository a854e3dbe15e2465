"""Alerts as the API and the dashboard show them: the list, and acknowledging one (recorded in the audit log)."""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa

from cloud_sync.store import audit
from cloud_sync.store.db import Store, alerts
from contracts.errors import NotFoundError

__all__ = ["acknowledge", "alert_list", "public"]


def public(row: dict[str, Any]) -> dict[str, Any]:
    """An `alerts` row as the API shows it (times in ISO 8601)."""
    return {
        "id": row["id"],
        "rule": row["rule"],
        "subject": row["subject"],
        "state": row["state"],
        "severity": row["severity"],
        "value": row["value"],
        "threshold": row["threshold"],
        "p_value": row.get("p_value"),
        "records": row.get("records"),
        "message": row["message"],
        "fired_at": audit.iso(row["fired_at"]),
        "resolved_at": audit.iso(row.get("resolved_at")),
        "resolution": row.get("resolution"),
        "acknowledged_by": row.get("acknowledged_by"),
        "acknowledged_at": audit.iso(row.get("acknowledged_at")),
    }


def alert_list(store: Store, state: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
    query = sa.select(alerts).order_by(alerts.c.id.desc()).limit(limit)
    if state:
        query = query.where(alerts.c.state == state)
    with store.engine.connect() as conn:
        return [public(dict(row)) for row in conn.execute(query).mappings()]


def acknowledge(store: Store, alert_id: int, actor: str, *, note: str | None = None) -> dict[str, Any]:
    with store.begin() as conn:
        row = conn.execute(sa.select(alerts).where(alerts.c.id == alert_id)).mappings().first()
        if row is None:
            raise NotFoundError(f"alert {alert_id} not found")
        now = time.time()
        conn.execute(alerts.update().where(alerts.c.id == alert_id).values(acknowledged_by=actor, acknowledged_at=now))
        audit.record(
            conn, actor, "acknowledge alert", target=f"{row['rule']} {row['subject']}", reason=note,
            details={"alert_id": alert_id},
        )  # fmt: skip
        updated = dict(conn.execute(sa.select(alerts).where(alerts.c.id == alert_id)).mappings().one())
    return public(updated)
