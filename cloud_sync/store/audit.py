"""The append-only audit log: who did what, to what, when and why (deploy, promote, rollback, device
accepted/rejected, alert acknowledged). Rows are only ever inserted; a trigger refuses UPDATE and DELETE.

    record(conn, actor="operator", action="deploy", target="machine-failure/2 -> group line-1", reason=...)
    export(entries(store), "csv")
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cloud_sync.store.db import Store, audit_log

__all__ = ["entries", "export", "iso", "record"]


def iso(epoch: float | None) -> str | None:
    """Epoch seconds as an ISO 8601 UTC string with milliseconds (None stays None)."""
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def record(
    conn: Connection,
    actor: str,
    action: str,
    *,
    target: str,
    reason: str | None = None,
    details: dict[str, Any] | None = None,
    at: float | None = None,
) -> None:
    conn.execute(
        audit_log.insert().values(
            at=time.time() if at is None else at,
            actor=actor,
            action=action,
            target=target,
            reason=reason,
            details=details or {},
        )
    )


def record_many(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Several entries (keys as `record`'s arguments, `at` required) in one executemany: the ingest audits
    every device's `deployed` event of a rollout, thousands in a batch."""
    if rows:
        conn.execute(
            audit_log.insert(),
            [{"reason": None, **row, "details": row.get("details") or {}} for row in rows],
        )


def entries(
    store: Store, since: float | None = None, action: str | None = None, limit: int | None = None
) -> list[dict[str, Any]]:
    """Audit entries in the order they happened."""
    query = sa.select(audit_log).order_by(audit_log.c.id)
    if since is not None:
        query = query.where(audit_log.c.at >= since)
    if action:
        query = query.where(audit_log.c.action == action)
    if limit:
        query = query.limit(limit)
    with store.engine.connect() as conn:
        rows = conn.execute(query).mappings().all()
    return [
        {
            "id": row["id"],
            "at": iso(row["at"]),
            "actor": row["actor"],
            "action": row["action"],
            "target": row["target"],
            "reason": row["reason"],
            "details": row["details"],
        }
        for row in rows
    ]


def export(rows: Iterable[dict[str, Any]], fmt: str) -> str:
    """JSON lines (one object a line) or CSV (details as a JSON column)."""
    if fmt == "jsonl":
        return "".join(orjson.dumps(row).decode() + "\n" for row in rows)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["id", "at", "actor", "action", "target", "reason", "details"])
        for row in rows:
            details = orjson.dumps(row["details"], option=orjson.OPT_SORT_KEYS).decode()
            writer.writerow(
                [row["id"], row["at"], row["actor"], row["action"], row["target"], row["reason"] or "", details]
            )
        return out.getvalue()
    raise ValueError(f"unknown audit format {fmt!r}: use jsonl or csv")
