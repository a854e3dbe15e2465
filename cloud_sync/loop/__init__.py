"""Closing the loop: retraining triggers, business impact, governance, cloud scoring, feedback rows."""

from __future__ import annotations

__all__: list[str] = []
