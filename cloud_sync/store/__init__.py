"""Persistence: the SQL store and its tables (`db.py`), the append-only audit log, the bundle registry."""

from __future__ import annotations

__all__: list[str] = []
